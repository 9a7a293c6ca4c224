"""The `hicl` command line: parse, validate, call one function, render the result."""

from __future__ import annotations

import functools
import json
import os
import shlex
from pathlib import Path
from typing import Annotated, Callable, TypeVar

import click
import typer
from rich.console import Console

from hicl.errors import HiclError
from hicl.export import EXPORTERS

app = typer.Typer(
    help="Hierarchical augmentation invariance with expanded views: self-supervised pretraining of timm backbones.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: readable at 80 columns, no {manifest} or <bool> metavars
)
console = Console(stderr=True, soft_wrap=True)  # messages are never wrapped into the next line when redirected


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"hicl {version('hicl')}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print hicl's version and exit.")
    ] = False,
) -> None:
    """Hierarchical augmentation invariance with expanded views: self-supervised pretraining of timm backbones."""

Overrides = Annotated[
    list[str] | None, typer.Option("--set", "-s", metavar="KEY=VALUE", help="Override a manifest value: section.key=value (repeatable).")
]
ManifestArg = Annotated[Path, typer.Argument(metavar="MANIFEST", help="Run manifest (YAML).")]
RunArg = Annotated[Path, typer.Argument(metavar="RUN", help="Run directory, or the manifest that names it.")]
NoVerify = Annotated[
    bool, typer.Option("--no-verify", help="Skip the SHA-256 check of checkpoint files (huge checkpoints).")
]

F = TypeVar("F", bound=Callable)


def _one_line(text: str, limit: int = 1000) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def user_errors(fn: F) -> F:
    """The CLI's error boundary: a HiclError or an OSError (permission, read-only, not a directory,
    disk full) is one line on stderr and exit code 2; anything else is a bug: one line, exit code 1,
    and the traceback only with HICL_DEBUG=1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, click.exceptions.Exit, click.exceptions.ClickException, click.exceptions.Abort):
            raise
        except HiclError as exc:
            typer.echo(f"error: {_one_line(str(exc))}", err=True)
            raise typer.Exit(2) from None
        except OSError as exc:
            if os.environ.get("HICL_DEBUG") == "1":
                raise
            where = exc.filename if exc.filename is not None else "i/o"
            typer.echo(f"error: {_one_line(f'{where}: {exc.strerror or exc}')}", err=True)
            raise typer.Exit(2) from None
        except Exception as exc:
            if os.environ.get("HICL_DEBUG") == "1":
                raise
            typer.echo(
                f"error: internal error {_one_line(f'{type(exc).__name__}: {exc}', 300)}; "
                "run with HICL_DEBUG=1 for the traceback",
                err=True,
            )
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _resume_target(manifest: Path, overrides: list[str] | None):
    """The manifest of `hicl pretrain --resume RUN_DIR`: the run's own, pointed at where the run now is."""
    from hicl.manifest import load_manifest
    from hicl.runs import RunDir

    run = RunDir(manifest)
    if not run.manifest_path.is_file():
        raise HiclError(f"{manifest}: not a hicl run directory (no manifest.yaml)")
    resolved = load_manifest(run.manifest_path, overrides)
    if resolved.run_dir.resolve() != manifest.resolve():  # the run was moved or is given by another path
        output = resolved.output.model_copy(update={"dir": manifest.resolve().parent, "name": manifest.resolve().name})
        resolved = resolved.model_copy(update={"output": output})
    return resolved


def _interrupted_hint(manifest: Path, overrides: list[str] | None, run_dir: Path) -> str:
    """A command that continues (or, before the first checkpoint, restarts) the run, exactly as typed."""
    from hicl.runs import RunDir

    if RunDir(run_dir).has_checkpoint():
        return f"interrupted; continue with: hicl pretrain --resume {shlex.quote(str(run_dir))}"
    words = ["hicl", "pretrain", str(manifest)] + [w for o in overrides or [] for w in ("--set", o)]
    return f"interrupted before the first checkpoint; start again with: {shlex.join(words)} --overwrite"


@app.command()
@user_errors
def pretrain(
    manifest: Annotated[Path, typer.Argument(metavar="MANIFEST", help="Run manifest (YAML); with --resume also a run directory.")],
    set_: Overrides = None,
    resume: Annotated[bool, typer.Option(help="Continue the run from its last checkpoint.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run (only the files hicl wrote).")] = False,
    progress: Annotated[bool, typer.Option(help="Show the progress bar.")] = True,
    no_verify: NoVerify = False,
    init_from: Annotated[
        Path | None,
        typer.Option(metavar="DIR", help="Start from the model weights of a `hicl export --format hicl` folder (fresh optimiser)."),
    ] = None,
) -> None:
    """Pretrain a backbone as the manifest says; writes the run directory."""
    from hicl.manifest import load_manifest

    if resume and overwrite:
        raise HiclError("--resume and --overwrite exclude each other: continue the run, or start it afresh")
    if resume and init_from is not None:
        raise HiclError("--init-from: a resumed run continues from its own checkpoint; pass either --resume or --init-from")
    if manifest.is_dir():
        if not resume and not (manifest / "manifest.yaml").is_file():
            raise HiclError(f"{manifest}: is a directory but not a run directory (no manifest.yaml); give a manifest file")
        if not resume:
            raise HiclError(f"{manifest}: is a run directory; pass --resume to continue it, or give a manifest file")
        resolved = _resume_target(manifest, set_)
    else:
        resolved = load_manifest(manifest, set_)  # a bad manifest is reported before torch is loaded
    # imported only now: these load torch and timm, which a mistyped manifest should not wait for
    from hicl.evaluate.linear import linear_eval, render_linear_eval
    from hicl.lock import RunLock
    from hicl.runs import RunDir
    from hicl.train.checkpoint import set_verification
    from hicl.train.dist import read_env
    from hicl.train.loop import pretrain as run_pretrain
    from hicl.train.signals import Stopped

    set_verification(not no_verify)
    try:
        result = run_pretrain(
            resolved, resume=resume, overwrite=overwrite, console=console, show_progress=progress, init_from=init_from
        )
    except Stopped as stopped:  # a first Ctrl-C / SIGTERM: the step finished and a checkpoint was written
        env = read_env()
        if env.rank == 0:
            resume = shlex.quote(str(resolved.run_dir))
            launcher = "torchrun ... -m hicl pretrain" if env.distributed else "hicl pretrain"
            typer.echo(f"{stopped}, checkpoint written; continue with: {launcher} --resume {resume}", err=True)
        raise typer.Exit(stopped.exit_code) from None
    except KeyboardInterrupt:  # a second one: stopped at once, the previous checkpoint stands
        typer.echo(_interrupted_hint(manifest, set_, resolved.run_dir), err=True)
        raise typer.Exit(130) from None
    if read_env().rank != 0:  # rank 0 reports (and evaluates) for the whole torchrun job
        return
    console.print(
        f"pretrained {result.steps} steps in {result.wall_s:.0f} s ({result.images_per_s:.0f} img/s on average), "
        f"final loss {result.final_loss:.4f} -> {result.run_dir}"
    )
    if resolved.eval.after_pretrain:
        with RunLock(result.run_dir):
            Console().print(render_linear_eval(linear_eval(resolved, RunDir(result.run_dir), console)))


@app.command("linear-eval")
@user_errors
def linear_eval_command(
    run: RunArg,
    set_: Overrides = None,
    stage: Annotated[str | None, typer.Option(metavar="STAGE", help="last, all, a 1-based stage index or name (eval.stage).")] = None,
    protocol: Annotated[str | None, typer.Option(metavar="NAME", help="fast or paper (eval.protocol).")] = None,
    no_verify: NoVerify = False,
) -> None:
    """Linear classifiers on frozen features, per label head and stage; writes results/linear_eval.json."""
    from hicl.evaluate.linear import linear_eval, render_linear_eval
    from hicl.lock import RunLock
    from hicl.runs import open_run
    from hicl.train.checkpoint import set_verification

    set_verification(not no_verify)
    extra = [f"eval.stage={stage}"] * (stage is not None) + [f"eval.protocol={protocol}"] * (protocol is not None)
    run_dir, manifest = open_run(run, [*(set_ or []), *extra])
    if not run_dir.path.is_dir():
        raise HiclError(f"{run_dir.path}: no such run directory (run hicl pretrain first)")
    with RunLock(run_dir.path):
        Console().print(render_linear_eval(linear_eval(manifest, run_dir, console)))


@app.command()
@user_errors
def knn(
    run: RunArg,
    set_: Overrides = None,
    stage: Annotated[str | None, typer.Option(metavar="STAGE", help="last, all, a 1-based stage index or name (eval.stage).")] = None,
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
    out: Annotated[Path, typer.Option(metavar="DIR", help="Output folder (new or empty; an earlier export only with --overwrite).")],
    format: Annotated[
        str,
        # the choices come from the exporter registry; an unknown one is a one-line error (run_export)
        typer.Option(metavar="FORMAT", help="; ".join(f"{f.name}: {f.summary}" for f in EXPORTERS.values()) + "."),
    ] = "timm",
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier export in --out (only its files).")] = False,
    pth: Annotated[bool, typer.Option(help="torchvision: also write the .pth file.")] = False,
    dynamic_size: Annotated[bool, typer.Option(help="onnx: dynamic height and width, not only batch.")] = False,
    set_: Overrides = None,
    no_verify: NoVerify = False,
) -> None:
    """Export the pretrained backbone (or the whole model) for another tool; prints the files written."""
    from hicl.export.base import ExportOptions, exporter, human_size, run_export
    from hicl.lock import RunLock
    from hicl.runs import open_run
    from hicl.train.checkpoint import set_verification

    exporter(format)  # an unknown format is named before anything is opened
    set_verification(not no_verify)
    run_dir, _ = open_run(run, set_)
    if not run_dir.path.is_dir():
        raise HiclError(f"{run_dir.path}: no such run directory (run hicl pretrain first)")
    with RunLock(run_dir.path, read_only_ok=True):
        result = run_export(run, format, out, overwrite=overwrite, options=ExportOptions(pth=pth, dynamic_size=dynamic_size), overrides=set_)
    for path in result.files:
        typer.echo(f"wrote {path} ({human_size(path.stat().st_size)})")
    for line in result.notes:
        typer.echo(line)


@app.command()
@user_errors
def plot(run: RunArg) -> None:
    """Redraw results/training.png (loss per stage, lr, kNN top-1) of a run, finished or still going."""
    from hicl.plots import save_training_plot
    from hicl.runs import open_run
    from hicl.train.loop import TRAINING_PLOT

    run_dir, _ = open_run(run)
    written = save_training_plot(run_dir.read_metrics(), run_dir.results / TRAINING_PLOT)
    if written is None:
        raise HiclError(f"{run_dir.metrics_path}: no step records to plot yet")
    console.print(f"wrote {written}")


@app.command("probe-invariance")
@user_errors
def probe_invariance(
    target: Annotated[str, typer.Argument(metavar="TARGET", help="Run directory, checkpoint directory, timm export folder or timm model name.")],
    stages: Annotated[
        list[str] | None, typer.Option("--stages", metavar="STAGE", help="Stage names or 1-based indices (repeatable); default all.")
    ] = None,
    compare: Annotated[str | None, typer.Option(metavar="TARGET", help="A second TARGET, drawn side by side with the difference.")] = None,
    images: Annotated[
        int, typer.Option(metavar="N", help="Held-out images (N of the test split; all of it when it has fewer).", min=8)
    ] = 512,
    weights: Annotated[Path | None, typer.Option(metavar="FILE", help="safetensors weights for a bare timm model name.")] = None,
    out: Annotated[Path | None, typer.Option(metavar="DIR", help="Output directory; default: the run's results/.")] = None,
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


def _seed_list(values: list[str] | None) -> tuple[int, ...]:
    """`--seeds 0,1,2` (or repeated `--seeds`): distinct non-negative integers."""
    try:
        seeds = tuple(int(part) for value in values or ["0,1,2"] for part in value.split(",") if part.strip())
    except ValueError:
        raise HiclError(f"--seeds: expected integers such as 0,1,2 (got {' '.join(values or [])!r})") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise HiclError("--seeds: expected distinct non-negative integers such as 0,1,2")
    return seeds


@app.command("rank-augmentations")
@user_errors
def rank_augmentations(
    manifest: ManifestArg,
    set_: Overrides = None,
    seeds: Annotated[list[str] | None, typer.Option(metavar="S,S,...", help="Seeds, comma-separated or repeated (default 0,1,2).")] = None,
    epochs: Annotated[int | None, typer.Option(metavar="N", min=1, help="Pilot epochs (default: the manifest's; warmup off).")] = None,
    jobs: Annotated[int, typer.Option(metavar="J", min=1, help="Pilots at the same time, each in its own process.")] = 1,
    linear: Annotated[bool, typer.Option(help="Also score every pilot with the linear probe.")] = False,
    method: Annotated[str, typer.Option(metavar="METHOD", help="leave-one-out (N+1 pilots per seed) or probe (one pilot per seed).")] = "leave-one-out",
    head: Annotated[str | None, typer.Option(metavar="HEAD", help="Label head to rank on (default: the first evaluated).")] = None,
    prefix: Annotated[str | None, typer.Option(metavar="NAME", help="Pilot run names: NAME_<variant>_s<seed> (default rank_<manifest name>).")] = None,
    out: Annotated[Path | None, typer.Option(metavar="DIR", help="Where ranking.json and ranking.png go (default: output.dir/PREFIX).")] = None,
    write: Annotated[Path | None, typer.Option(metavar="FILE", help="Write the manifest with the measured hierarchy here.")] = None,
    images: Annotated[int, typer.Option(metavar="N", min=8, help="probe: held-out images.")] = 512,
) -> None:
    """Rank the manifest's augmentation ops by what removing each costs (kNN top-1 of short pilots)."""
    from hicl.pilots import Interrupted
    from hicl.ranking.leave_one_out import RankRequest
    from hicl.ranking.run import run_ranking

    if method not in ("leave-one-out", "probe"):
        raise HiclError(f"--method: expected leave-one-out or probe (got {method!r})")
    request = RankRequest(Path(manifest), tuple(set_ or []), _seed_list(seeds), epochs, jobs, linear, head, prefix,
                          method.replace("-", "_"), images)
    try:
        tables, paths = run_ranking(request, out, write, console)
    except Interrupted as stopped:
        typer.echo(f"{stopped}; run the same command again to continue (finished pilots are reused)", err=True)
        raise typer.Exit(130) from None
    for table in tables:
        Console().print(table)
    console.print("wrote " + ", ".join(str(p) for p in paths))


@app.command()
@user_errors
def validate(manifest: ManifestArg, set_: Overrides = None) -> None:
    """Validate a manifest and print it resolved (defaults filled, overrides applied), after a comment
    naming the plugin modules it imports."""
    from hicl.manifest import dump_manifest, load_manifest, plugin_records

    resolved = load_manifest(manifest, set_)
    for record in plugin_records(resolved):
        typer.echo("# imports plugin " + " ".join(f"{key}={value}" for key, value in record.items()))
    typer.echo(dump_manifest(resolved), nl=False)


@app.command()
@user_errors
def schema(
    markdown: Annotated[bool, typer.Option(help="Print the key reference (docs/manifest.md) instead.")] = False,
    plugins: Annotated[
        list[str] | None, typer.Option("--plugin", help="A module that registers more ops, as augment.plugins (repeatable).")
    ] = None,
) -> None:
    """Print the JSON schema of a run manifest."""
    from hicl.manifest import manifest_model
    from hicl.manifest_docs import manifest_markdown
    from hicl.registry import import_plugins

    import_plugins(plugins or [], "--plugin")
    model = manifest_model(plugins or [])
    typer.echo(manifest_markdown(model) if markdown else json.dumps(model.model_json_schema(), indent=2), nl=not markdown)


# Typer 0.12-0.2x raise click's exceptions; later releases raise those of the click copy they vendor.
_CLICK = (click, getattr(typer, "_click", click))
_USAGE_ERRORS = tuple({m.exceptions.UsageError for m in _CLICK})
_CLICK_ERRORS = tuple({m.exceptions.ClickException for m in _CLICK})
_ABORTS = (click.exceptions.Abort, typer.Abort)


def run(args: list[str] | None = None, prog_name: str = "hicl") -> None:
    """The `hicl` entry point: the app, with a usage mistake (missing argument, unknown option, bad
    choice) reported as one line naming the command's --help, exit code 2, as every other user error."""
    try:
        code = app(args=args, prog_name=prog_name, standalone_mode=False)
    except _USAGE_ERRORS as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `hicl` or `hicl export`: the help itself
            typer.echo(exc.format_message())
            raise SystemExit(0) from None
        where = exc.ctx.command_path if exc.ctx is not None else prog_name
        typer.echo(f"error: {_one_line(exc.format_message())} (see '{where} --help')", err=True)
        raise SystemExit(2) from None
    except _CLICK_ERRORS as exc:
        typer.echo(f"error: {_one_line(exc.format_message())}", err=True)
        raise SystemExit(exc.exit_code) from None
    except _ABORTS:
        raise SystemExit(130) from None
    raise SystemExit(code if isinstance(code, int) else 0)
