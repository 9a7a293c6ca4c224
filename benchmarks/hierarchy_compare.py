"""Linear-eval accuracy of SimSiam with and without the hierarchy, same data, epochs and seed.

Runs `off`, `uniform`, `add_one` without embeddings and `add_one` with colour embeddings from one
base manifest (default: manifests/simsiam_hicl.yaml), then prints top-1 per label head. Extra
`--set` overrides apply to every variant, e.g. `--set schedule.epochs=10`; `--prefix` names the run
directories (so that two seeds can run at once) and `--json` also writes the rows to a file.
"""

from __future__ import annotations

import argparse
import json
import time

from rich.console import Console

from hicl.evaluate.linear import linear_eval
from hicl.manifest import load_manifest
from hicl.runs import RunDir
from hicl.train.loop import pretrain

VARIANTS = {
    "off": ["hierarchy.mode=off"],
    "uniform": ["hierarchy.mode=uniform", "hierarchy.embeddings.ops=[]"],
    "add_one": ["hierarchy.mode=add_one", "hierarchy.embeddings.ops=[]"],
    "add_one+color_emb": ["hierarchy.mode=add_one", "hierarchy.embeddings.ops=[color_jitter]"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", default="manifests/simsiam_hicl.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    parser.add_argument("--prefix", default="compare")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args()
    console = Console(stderr=True)
    rows = {}
    for name in args.variants:
        overrides = [*args.overrides, *VARIANTS[name], f"output.name={args.prefix}_{name.replace('+', '_')}",
                     "eval.after_pretrain=false"]
        manifest = load_manifest(args.manifest, overrides)
        start = time.perf_counter()
        result = pretrain(manifest, overwrite=True, console=console, show_progress=False)
        train_s = time.perf_counter() - start
        scores = linear_eval(manifest, RunDir(result.run_dir), console)
        rows[name] = {"train_s": round(train_s, 1), "images_per_s": round(result.images_per_s, 1),
                      **{h: round(100 * v["pretrained"]["top1"], 1) for h, v in scores["heads"].items()}}
        console.print(f"{name}: {json.dumps(rows[name])}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
    heads = [k for k in next(iter(rows.values())) if k not in ("train_s", "images_per_s")]
    print(f"{'variant':<20}" + "".join(f"{h:>11}" for h in heads) + f"{'train s':>9}{'img/s':>8}")
    for name, row in rows.items():
        print(f"{name:<20}" + "".join(f"{row[h]:>11.1f}" for h in heads) + f"{row['train_s']:>9.0f}{row['images_per_s']:>8.0f}")


if __name__ == "__main__":
    main()
