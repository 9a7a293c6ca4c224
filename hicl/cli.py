"""The `hicl` command line: parse, validate, call one function, render the result."""

from __future__ import annotations

import enum
import functools
import json
from pathlib import Path
from typing import Annotated, Callable, TypeVar

import typer
from rich.console import Console

from hicl.errors import HiclError
from hicl.export import EXPORTERS

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
# The --format choices, from the exporter registry (typer lists an Enum's values in --help and checks them).
ExportFormatName = enum.Enum("ExportFormatName", {name: name for name in EXPORTERS}, type=str)


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
    init_from: Annotated[
        Path | None,
        typer.Option(help="Start from the model weights of a `hicl export --format hicl` folder (fresh optimiser)."),
    ] = None,
) -> None:
    """Pretrain a backbone as the manifest says; writes the run directory."""
    from hicl.evaluate.linear import linear_eval, render_linear_eval
    from hicl.manifest import load_manifest
    from hicl.runs import RunDir
    from hicl.train.loop import pretrain as run_pretrain

    if resume and init_from is not None:
        raise HiclError("--init-from: a resumed run continues from its own checkpoint; pass either --resume or --init-from")
    resolved = load_manifest(manifest, set_)
    try:
        result = run_pretrain(
            resolved, resume=resume, overwrite=overwrite, console=console, show_progress=progress, init_from=init_from
        )
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
def linear_eval_command(run: RunArg, set_: Overrides = None) -> None:
    """Linear classifiers on frozen features, per label head; writes results/linear_eval.json."""
    from hicl.evaluate.linear import linear_eval, render_linear_eval
    from hicl.runs import open_run

    run_dir, manifest = open_run(run, set_)
    Console().print(render_linear_eval(linear_eval(manifest, run_dir, console)))


@app.command()
@user_errors
def export(
    run: RunArg,
    out: Annotated[Path, typer.Option(help="Output folder (new or empty; an earlier export only with --overwrite).")],
    format: Annotated[
        ExportFormatName,
        typer.Option(help="; ".join(f"{f.name}: {f.summary}" for f in EXPORTERS.values()) + "."),
    ] = ExportFormatName.timm,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier export in --out (only its files).")] = False,
    pth: Annotated[bool, typer.Option(help="torchvision: also write the .pth file.")] = False,
    set_: Overrides = None,
) -> None:
    """Export the pretrained backbone (or the whole model) for another tool; prints the files written."""
    from hicl.export.base import ExportOptions, human_size, run_export

    result = run_export(run, format.value, out, overwrite=overwrite, options=ExportOptions(pth=pth), overrides=set_)
    for path in result.files:
        typer.echo(f"wrote {path} ({human_size(path.stat().st_size)})")
    for line in result.notes:
        typer.echo(line)


@app.command("probe-invariance")
def probe_invariance(run: RunArg) -> None:
    """Per-stage invariance analysis (not available in this version)."""
    typer.echo("error: probe-invariance is not available yet in this version of hicl", err=True)
    raise typer.Exit(1)


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
