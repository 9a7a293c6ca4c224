"""Linear-eval and kNN accuracy of one method with and without the hierarchy, over several seeds.

Runs `off`, `uniform`, `add_one` without embeddings and `add_one` with colour embeddings (or the
`--variants` named) from one base manifest, for every `--seeds` seed, each as `hicl pretrain`,
`hicl linear-eval` and `hicl knn` in its own process. `--jobs N` runs N of them at once, each with
`runtime.threads` = `--threads`. Extra `--set` overrides apply to every variant; `--prefix` names the
run directories (`<prefix>_<variant>_s<seed>`); the random-init baseline is evaluated with the
`--baseline` variant only (default: the first; it depends on the seed alone). A run whose directory already holds both results for
the same resolved manifest is read back instead of rerun, so an interrupted comparison continues.
`--probe A B` also runs `hicl probe-invariance` on variant A against B (first seed). Prints one row
per run, then mean +- sample std per variant, and writes everything to `--json`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from hicl.manifest import Manifest, load_manifest

VARIANTS = {
    "off": ["hierarchy.mode=off"],
    "uniform": ["hierarchy.mode=uniform", "hierarchy.embeddings.ops=[]"],
    "add_one": ["hierarchy.mode=add_one", "hierarchy.embeddings.ops=[]"],
    "add_one+color_emb": ["hierarchy.mode=add_one", "hierarchy.embeddings.ops=[color_jitter]"],
    "add_one+color_emb+joint_bn": [
        "hierarchy.mode=add_one", "hierarchy.embeddings.ops=[color_jitter]", "hierarchy.bn=joint",
    ],
}


def run_overrides(args: argparse.Namespace, variant: str, seed: int) -> list[str]:
    # the random-init baseline depends only on the seed: evaluate it with one variant alone
    baseline = variant == (args.baseline or args.variants[0])
    return [
        *args.overrides, *VARIANTS[variant], f"seed={seed}", f"runtime.threads={args.threads}",
        f"output.name={args.prefix}_{variant.replace('+', '_')}_s{seed}", "eval.after_pretrain=false",
        f"eval.random_init_baseline={str(baseline).lower()}",
    ]


def hicl(command: list[str], log: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "160"}
    with log.open("a") as f:
        subprocess.run([sys.executable, "-m", "hicl", *command], check=True, stdout=f, stderr=subprocess.STDOUT, env=env)


def finished(manifest: Manifest) -> bool:
    """The run directory already holds both results for exactly this resolved manifest."""
    run = manifest.run_dir
    if not all((run / "results" / name).is_file() for name in ("linear_eval.json", "knn.json")):
        return False
    saved = yaml.safe_load((run / "manifest.yaml").read_text())
    return saved == manifest.model_dump(mode="json")


def top1_by_head(result: dict, which: str) -> dict[str, float]:
    return {h: round(100 * v[which]["top1"], 2) for h, v in result["heads"].items() if which in v}


def run_one(args: argparse.Namespace, variant: str, seed: int) -> dict:
    sets = run_overrides(args, variant, seed)
    manifest = load_manifest(args.manifest, sets)
    run = manifest.run_dir
    log = Path(f"{run}.log")
    train_s = None
    if not finished(manifest):
        set_args = [a for s in sets for a in ("--set", s)]
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("")
        start = time.perf_counter()
        hicl(["pretrain", args.manifest, "--overwrite", "--no-progress", *set_args], log)
        train_s = round(time.perf_counter() - start, 1)
        hicl(["linear-eval", str(run)], log)
        hicl(["knn", str(run)], log)
    linear = json.loads((run / "results" / "linear_eval.json").read_text())
    knn = json.loads((run / "results" / "knn.json").read_text())
    row = {
        "variant": variant, "seed": seed, "run": str(run), "train_s": train_s,
        "linear": top1_by_head(linear, "pretrained"), "knn": top1_by_head(knn, "pretrained"),
        "linear_random_init": top1_by_head(linear, "random_init"),
        "knn_random_init": top1_by_head(knn, "random_init"),
    }
    print(json.dumps(row), flush=True)
    return row


def mean_std(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def summary(rows: list[dict], variants: list[str]) -> str:
    heads = list(rows[0]["linear"])
    lines = ["| variant | seeds | " + " | ".join(f"linear {h} | kNN {h}" for h in heads) + " |",
             "| --- | --- | " + " | ".join("--- | ---" for _ in heads) + " |"]
    labelled = [(v, [r for r in rows if r["variant"] == v]) for v in variants]
    labelled.append(("random init", [r for r in rows if r["linear_random_init"]]))
    for label, runs in labelled:
        if not runs:
            continue
        lin, knn = ("linear", "knn") if label != "random init" else ("linear_random_init", "knn_random_init")
        cells = " | ".join(f"{mean_std([r[lin][h] for r in runs])} | {mean_std([r[knn][h] for r in runs])}" for h in heads)
        lines.append(f"| {label} | {len(runs)} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", default="manifests/simsiam_hicl.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--variants", nargs="*", default=["off", "uniform", "add_one", "add_one+color_emb"],
                        choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0])
    parser.add_argument("--jobs", type=int, default=1, help="runs at the same time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--baseline", default=None, choices=list(VARIANTS),
                        help="the variant whose runs also evaluate the random-init backbone (default: the first)")
    parser.add_argument("--prefix", default="compare")
    parser.add_argument("--probe", nargs=2, metavar=("VARIANT", "AGAINST"), default=None,
                        help="also probe-invariance VARIANT against AGAINST (first seed)")
    parser.add_argument("--probe-images", type=int, default=512, help="held-out images for the probe")
    parser.add_argument("--json", default=None, help="also write the rows and the summary to this file")
    args = parser.parse_args()
    # the costly four-stage runs first, so that the last job to finish is a short one
    jobs = sorted(((v, s) for s in args.seeds for v in args.variants), key=lambda vs: vs[0] == "off")
    def attempt(variant: str, seed: int) -> dict | None:
        try:
            return run_one(args, variant, seed)
        except subprocess.CalledProcessError:  # one failed run must not cancel the others
            print(f"{variant} seed {seed} failed: see {load_manifest(args.manifest, run_overrides(args, variant, seed)).run_dir}.log",
                  file=sys.stderr, flush=True)
            return None

    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda vs: attempt(*vs), jobs))
    rows = sorted((r for r in results if r is not None), key=lambda r: (args.variants.index(r["variant"]), r["seed"]))
    if not rows:
        sys.exit("every run failed")
    table = summary(rows, args.variants)
    print(table)
    if args.probe:
        variant, against = (load_manifest(args.manifest, run_overrides(args, v, args.seeds[0])).run_dir
                            for v in args.probe)
        out = Path(f"{variant}_vs_{against.name}")
        hicl(["probe-invariance", str(variant), "--compare", str(against), "--out", str(out),
              "--images", str(args.probe_images)], Path(f"{out}.log"))
        print(Path(f"{out}.log").read_text())
    if args.json:
        Path(args.json).write_text(json.dumps({"argv": sys.argv[1:], "rows": rows, "summary": table}, indent=1) + "\n")
    if None in results:
        sys.exit(f"{results.count(None)} run(s) failed")


if __name__ == "__main__":
    main()
