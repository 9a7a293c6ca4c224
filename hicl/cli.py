"""The `hicl` command line: parse, validate, call one function, render the result."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Annotated, Callable, TypeVar

import typer
from rich.console import Console

from hicl.errors import HiclError

app = typer.Typer(
    help="Hierarchical augmentation invariance with expanded views: self-supervised pretraining of timm backbones.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)

Overrides = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="Override a manifest value: section.key=value (repeatable).")
]
ManifestArg = Annotated[Path, typer.Argument(help="Run manifest (YAML).")]
RunArg = Annotated[Path, typer.Argument(help="Run directory, or the manifest that names it.")]

F = TypeVar("F", bound=Callable)


def user_errors(fn: F) -> F:
    """Turn a HiclError into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except HiclError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


@app.command()
@user_errors
def pretrain(
    manifest: ManifestArg,
    set_: Overrides = None,
    resume: Annotated[bool, typer.Option(help="Continue the run from its last checkpoint.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Delete an existing run directory first.")] = False,
    progress: Annotated[bool, typer.Option(help="Show the progress bar.")] = True,
) -> None:
    """Pretrain a backbone as the manifest says; writes the run directory."""
    from hicl.evaluate.linear import linear_eval, render_linear_eval
    from hicl.manifest import load_manifest
    from hicl.runs import RunDir
    from hicl.train.loop import pretrain as run_pretrain

    resolved = load_manifest(manifest, set_)
    try:
        result = run_pretrain(resolved, resume=resume, overwrite=overwrite, console=console, show_progress=progress)
    except KeyboardInterrupt:
        typer.echo(f"interrupted; continue with: hicl pretrain {manifest} --resume", err=True)
        raise typer.Exit(130) from None
    console.print(
        f"pretrained {result.steps} steps in {result.wall_s:.0f} s ({result.images_per_s:.0f} img/s), "
        f"final loss {result.final_loss:.4f} -> {result.run_dir}"
    )
    if resolved.eval.after_pretrain:
        Console().print(render_linear_eval(linear_eval(resolved, RunDir(result.run_dir), console)))


@app.command("linear-eval")
@user_errors
def linear_eval_command(
    run: RunArg,
    set_: Overrides = None,
    stage: Annotated[str | None, typer.Option(help="last, all, a 1-based stage index or name (eval.stage).")] = None,
    protocol: Annotated[str | None, typer.Option(help="fast or paper (eval.protocol).")] = None,
) -> None:
    """Linear classifiers on frozen features, per label head and stage; writes results/linear_eval.json."""
    from hicl.evaluate.linear import linear_eval, render_linear_eval
    from hicl.runs import open_run

    extra = [f"eval.stage={stage}"] * (stage is not None) + [f"eval.protocol={protocol}"] * (protocol is not None)
    run_dir, manifest = open_run(run, [*(set_ or []), *extra])
    Console().print(render_linear_eval(linear_eval(manifest, run_dir, console)))


@app.command()
@user_errors
def knn(
    run: RunArg,
    set_: Overrides = None,
    stage: Annotated[str | None, typer.Option(help="last, all, a 1-based stage index or name (eval.stage).")] = None,
) -> None:
    """Weighted kNN (eval.knn_k, eval.knn_temperature) on frozen features; writes results/knn.json."""
    from hicl.evaluate.knn_eval import knn_eval
    from hicl.evaluate.linear import render_linear_eval
    from hicl.runs import open_run

    run_dir, manifest = open_run(run, [*(set_ or []), *([f"eval.stage={stage}"] if stage is not None else [])])
    Console().print(render_linear_eval(knn_eval(manifest, run_dir, console), title="weighted kNN"))


@app.command()
@user_errors
def export(
    run: RunArg,
    out: Annotated[Path, typer.Option(help="Output directory.")],
    format: Annotated[str, typer.Option(help="Export format: timm.")] = "timm",
    set_: Overrides = None,
) -> None:
    """Export the pretrained backbone's weights for another tool."""
    from hicl.export import FORMATS, export_timm
    from hicl.runs import open_run

    if format not in FORMATS:
        raise HiclError(f"--format: unknown format {format!r}; expected one of {', '.join(FORMATS)}")
    run_dir, manifest = open_run(run, set_)
    weights = export_timm(manifest, run_dir, out)
    console.print(f"wrote {weights} (see {out / 'export.json'} for how to load it)")


@app.command("probe-invariance")
@user_errors
def probe_invariance(
    target: Annotated[str, typer.Argument(help="Run directory, checkpoint directory, timm export folder or timm model name.")],
    stages: Annotated[
        list[str] | None, typer.Option("--stages", help="Stage names or 1-based indices (repeatable); default all.")
    ] = None,
    compare: Annotated[str | None, typer.Option(help="A second TARGET, drawn side by side with the difference.")] = None,
    images: Annotated[int, typer.Option(help="Held-out images (the first N of the test split).", min=8)] = 512,
    weights: Annotated[Path | None, typer.Option(help="safetensors weights for a bare timm model name.")] = None,
    out: Annotated[Path | None, typer.Option(help="Output directory; default: the run's results/.")] = None,
) -> None:
    """Per stage and augmentation op: invariance and predictability of the op on held-out images."""
    from hicl.evaluate.probe_report import default_out, probe_targets, render_difference, render_probe, write_outputs
    from hicl.evaluate.probe_target import open_probe_target

    targets = [open_probe_target(target, weights)]
    if compare is not None:
        targets.append(open_probe_target(compare))
    stage_list = [part for item in stages or [] for part in item.split(",") if part] or None
    probed = probe_targets(targets, stage_list, images, console)
    table = Console()
    for p in probed:
        table.print(render_probe(p))
    if len(probed) == 2:
        table.print(render_difference(*probed))
    paths = write_outputs(probed, out or default_out(targets[0]))
    console.print("wrote " + ", ".join(str(p) for p in paths))


@app.command()
@user_errors
def validate(manifest: ManifestArg, set_: Overrides = None) -> None:
    """Validate a manifest and print it resolved (defaults filled, overrides applied)."""
    from hicl.manifest import dump_manifest, load_manifest

    typer.echo(dump_manifest(load_manifest(manifest, set_)), nl=False)


@app.command()
def schema() -> None:
    """Print the JSON schema of a run manifest."""
    from hicl.manifest import Manifest

    typer.echo(json.dumps(Manifest.model_json_schema(), indent=2))
