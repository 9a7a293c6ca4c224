"""Linear-eval and kNN accuracy of one method with and without the hierarchy, over several seeds.

Runs `off`, `uniform`, `add_one` without embeddings and `add_one` with colour embeddings (or the
`--variants` named) from one base manifest, for every `--seeds` seed, each pretrained and scored by
linear eval and kNN (`hicl.pilots`, the runner `hicl rank-augmentations` uses too). `--jobs N` runs N
of them at once in worker processes, each with `runtime.threads` = `--threads`. Extra `--set`
overrides apply to every variant; `--prefix` names the run directories (`<prefix>_<variant>_s<seed>`);
the random-init baseline is evaluated with the `--baseline` variant only (default: the first; it
depends on the seed alone). A run whose directory already holds both results for the same resolved
manifest is read back instead of rerun (`hicl.pilots.finished`), so an interrupted comparison continues.
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
from pathlib import Path

from hicl.manifest import load_manifest
from hicl.pilots import Interrupted, Pilot, PilotFailure, PilotScore, run_pilots

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


def pilot(args: argparse.Namespace, variant: str, seed: int) -> Pilot:
    return Pilot(Path(args.manifest), tuple(run_overrides(args, variant, seed)), variant, seed, linear=True)


def row(score: PilotScore) -> dict:
    return {
        "variant": score.pilot.variant, "seed": score.pilot.seed, "run": str(score.run), "train_s": score.train_s,
        "linear": score.top1("linear"), "knn": score.top1("knn"),
        "linear_random_init": score.top1("linear", "random_init"), "knn_random_init": score.top1("knn", "random_init"),
    }


def report(outcome: PilotScore | PilotFailure) -> None:
    if isinstance(outcome, PilotFailure):  # one failed run must not cancel the others
        print(f"{outcome.pilot.label} failed: {outcome.message} (see {outcome.log})", file=sys.stderr, flush=True)
    else:
        print(json.dumps(row(outcome)), flush=True)


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
    try:
        outcomes = run_pilots([pilot(args, v, s) for v, s in jobs], args.jobs, report)
    except Interrupted as stopped:
        sys.exit(f"{stopped}; run the same command again to continue (finished runs are reused)")
    scores = [o for o in outcomes if isinstance(o, PilotScore)]
    rows = sorted(map(row, scores), key=lambda r: (args.variants.index(r["variant"]), r["seed"]))
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
    if len(scores) < len(outcomes):
        sys.exit(f"{len(outcomes) - len(scores)} run(s) failed")


if __name__ == "__main__":
    main()
