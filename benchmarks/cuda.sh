#!/usr/bin/env bash
# Every GPU figure hicl reports, in one go, on one CUDA device: the CUDA tests, then
# benchmarks/augment.py, benchmarks/hierarchy_step.py and benchmarks/throughput.py (ResNet-50, 224 px,
# batch 128, bf16, channels_last; off and add_one; eager and compiled). Logs and JSON go to $1
# (default: benchmarks/cuda-results). About 10 minutes on an H100-class card.
#
#   bash benchmarks/cuda.sh [OUT_DIR]
set -uo pipefail
out=${1:-benchmarks/cuda-results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
python -c "import torch, torchvision, timm; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'timm', timm.__version__)" | tee -a "$out/gpu.txt"

python -m pytest -q -k "cuda or device" tests/test_augment_pipeline.py tests/test_device.py 2>&1 | tee "$out/tests.log"

python benchmarks/augment.py --device cuda --batch 256 --sizes 32 224 --iters 10 2>&1 | tee "$out/augment.log"

for adapter in sepconv reference; do
  python benchmarks/hierarchy_step.py --device cuda --backbone resnet50 --size 224 --batch 128 \
    --precision bf16 --adapter "$adapter" --iters 10 2>&1 | tee "$out/hierarchy_step_$adapter.log"
done

# SimSiam, ResNet-50 at 224 px with the reference choices (manifests/paper/), as the training-engine issue asks
r50=(manifests/paper/simsiam_resnet50_224px.yaml --device cuda --set optim.batch_size=128
     --set runtime.precision=bf16 --set runtime.channels_last=true --iters 20)
python benchmarks/throughput.py "${r50[@]}" --compile eager \
  --json "$out/throughput_eager.json" 2>&1 | tee "$out/throughput_eager.log"
for mode in off add_one; do  # compiled variants one per process, so that compiled graphs do not pile up
  python benchmarks/throughput.py "${r50[@]}" --compile compiled --modes "$mode" \
    --warmup 5 --json "$out/throughput_compiled_$mode.json" 2>&1 | tee "$out/throughput_compiled_$mode.log"
done
