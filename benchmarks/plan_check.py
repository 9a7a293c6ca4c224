"""`hicl plan` held against the real run: predicted epoch time and peak memory growth, then the same
manifest pretrained, each in its own process, one after the other.

* plan: `hicl.train.plan.plan_and_report` (what `hicl plan` prints), its epoch time and peak RSS growth
  (on CUDA the allocator's peak);
* run: `hicl.pretrain` of the same manifest with `eval.after_pretrain` off, in a fresh run directory;
  its epochs' `seconds` from `metrics.jsonl`, and its peak RSS growth measured as the plan measures it
  (the process's peak RSS over its RSS after the imports, before the model and data are built).

The first epoch includes the warm-up (allocator, oneDNN kernel selection), so the table compares the
plan with the mean of the later epochs and shows the first one apart. Example (docs/results.md):

    python benchmarks/plan_check.py manifests/paper/simsiam_resnet50_224px.yaml --epochs 3 \
        --set optim.batch_size=8 --set data.synthetic.num_train=96
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def measure_plan(manifest: str, overrides: list[str], steps: int) -> dict:
    from rich.console import Console

    from hicl.manifest import load_manifest
    from hicl.train.plan import plan_and_report

    plan = plan_and_report(load_manifest(manifest, overrides), Console(stderr=True), steps=steps)
    return {"epoch_s": plan.epoch_s, "growth_bytes": plan.peak_growth_bytes, "steps_per_epoch": plan.steps_per_epoch}


def measure_run(manifest: str, overrides: list[str]) -> dict:
    from hicl import pretrain
    from hicl.train.plan import peak_rss_bytes, rss_bytes  # loads what the plan's baseline holds (torch, timm, loop)

    before = rss_bytes()
    done = pretrain(manifest, overrides, overwrite=True)
    growth = peak_rss_bytes() - before
    records = [json.loads(line) for line in (done.run_dir / "metrics.jsonl").read_text().splitlines()]
    seconds = [record["seconds"] for record in records if record.get("kind") == "epoch"]
    return {"epoch_seconds": seconds, "growth_bytes": growth}


def child(role: str, manifest: str, overrides: list[str], steps: int) -> dict:
    """Run one side in a fresh interpreter (each process's peak RSS is its own)."""
    command = [sys.executable, __file__, manifest, "--role", role, "--steps", str(steps)]
    command += [arg for value in overrides for arg in ("--set", value)]
    lines = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout.strip().splitlines()
    print("\n".join(lines[:-1]), file=sys.stderr)  # what the side printed (the plan's table)
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="section.key=value")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the real run")
    parser.add_argument("--steps", type=int, default=5, help="the plan's timed steps")
    parser.add_argument("--role", choices=["plan", "run"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        measure = measure_plan(args.manifest, args.overrides, args.steps) if args.role == "plan" \
            else measure_run(args.manifest, args.overrides)
        print(json.dumps(measure))
        return
    with tempfile.TemporaryDirectory(prefix="hicl-plan-check-") as tmp:
        overrides = [*args.overrides, f"schedule.epochs={args.epochs}", "eval.after_pretrain=false",
                     f"output.dir={tmp}"]
        start = time.perf_counter()
        plan = child("plan", args.manifest, overrides, args.steps)
        plan_wall = time.perf_counter() - start
        run = child("run", args.manifest, overrides, args.steps)
    later = run["epoch_seconds"][1:] or run["epoch_seconds"]
    real_epoch = statistics.mean(later)
    mib = 2**20
    print(f"{'':<28}{'plan':>10}{'real run':>12}{'plan / run':>12}")
    print(f"{'epoch (s)':<28}{plan['epoch_s']:>10.1f}{real_epoch:>12.1f}{plan['epoch_s'] / real_epoch:>12.2f}")
    print(f"{'peak RSS growth (MiB)':<28}{plan['growth_bytes'] / mib:>10.0f}{run['growth_bytes'] / mib:>12.0f}"
          f"{plan['growth_bytes'] / run['growth_bytes']:>12.2f}")
    print(f"plan: {plan_wall:.1f} s wall, interpreter start and imports included")
    print(f"real run: {plan['steps_per_epoch']} steps per epoch, epochs "
          + ", ".join(f"{s:.1f}" for s in run["epoch_seconds"]) + " s (the first includes warm-up; "
          "the table takes the mean of the others)")


if __name__ == "__main__":
    main()
