"""The `hicl` command line: parse, validate, call one function, render the result."""

from __future__ import annotations

import functools
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Annotated, Callable, TypeVar

import click
import typer
from rich.console import Console

from hicl.errors import HiclError
from hicl.export import EXPORTERS, check_format_name
from hicl.run_list import check_run_target

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
    from hicl import api
    from hicl.train.signals import Stopped  # torch-free: a mistyped manifest is reported before torch loads

    try:
        done = api.pretrain(manifest, set_, resume, overwrite=overwrite, progress=progress, verify=not no_verify,
                            init_from=init_from, console=console)
    except Stopped as stopped:  # a first Ctrl-C / SIGTERM: the step finished and a checkpoint was written
        from hicl.train.dist import read_env

        env = read_env()
        if env.rank == 0:
            run_dir = shlex.quote(str(api.resolve_manifest(manifest, set_, resume).run_dir))
            launcher = "torchrun ... -m hicl pretrain" if env.distributed else "hicl pretrain"
            if stopped.reason is not None:  # the run stopped itself: resuming it as it is would not help
                typer.echo(f"error: {stopped}; checkpoint written (inspect it, change the manifest, start again)", err=True)
            else:
                typer.echo(f"{stopped}, checkpoint written; continue with: {launcher} --resume {run_dir}", err=True)
        raise typer.Exit(stopped.exit_code) from None
    except KeyboardInterrupt:  # a second one: stopped at once, the previous checkpoint stands
        typer.echo(_interrupted_hint(manifest, set_, api.resolve_manifest(manifest, set_, resume).run_dir), err=True)
        raise typer.Exit(130) from None
    from hicl.evaluate.linear import render_linear_eval
    from hicl.train.dist import read_env

    if read_env().rank != 0:  # rank 0 reports (and evaluates) for the whole torchrun job
        return
    console.print(done.summary())
    if done.linear_eval is not None:
        Console().print(render_linear_eval(done.linear_eval))


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
    check_run_target(run)
    from hicl import api
    from hicl.evaluate.linear import render_linear_eval

    result = api.linear_eval(run, set_, stage=stage, protocol=protocol, verify=not no_verify, console=console)
    Console().print(render_linear_eval(result))


@app.command()
@user_errors
def knn(
    run: RunArg,
    set_: Overrides = None,
    stage: Annotated[str | None, typer.Option(metavar="STAGE", help="last, all, a 1-based stage index or name (eval.stage).")] = None,
) -> None:
    """Weighted kNN (eval.knn_k, eval.knn_temperature) on frozen features; writes results/knn.json."""
    check_run_target(run)
    from hicl import api
    from hicl.evaluate.linear import render_linear_eval

    Console().print(render_linear_eval(api.knn(run, set_, stage=stage, console=console), title="weighted kNN"))


@app.command()
@user_errors
def export(
    run: RunArg,
    out: Annotated[Path, typer.Option(metavar="DIR", help="Output folder (new or empty; an earlier export only with --overwrite).")],
    format: Annotated[
        str,
        # the choices come from the exporter registry; an unknown one is a one-line error (check_format_name)
        typer.Option(metavar="FORMAT", help="; ".join(f"{f.name}: {f.summary}" for f in EXPORTERS.values()) + "."),
    ] = "timm",
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier export in --out (only its files).")] = False,
    pth: Annotated[bool, typer.Option(help="torchvision: also write the .pth file.")] = False,
    dynamic_size: Annotated[bool, typer.Option(help="onnx: dynamic height and width, not only batch.")] = False,
    set_: Overrides = None,
    no_verify: NoVerify = False,
) -> None:
    """Export the pretrained backbone (or the whole model) for another tool; prints the files written."""
    check_format_name(format)
    check_run_target(run)
    from hicl import api
    from hicl.export.base import human_size

    result = api.export(run, out, format, overwrite=overwrite, pth=pth, dynamic_size=dynamic_size, overrides=set_,
                        verify=not no_verify)
    for path in result.files:
        typer.echo(f"wrote {path} ({human_size(path.stat().st_size)})")
    for line in result.notes:
        typer.echo(line)


@app.command()
@user_errors
def plot(run: RunArg) -> None:
    """Redraw results/training.png (loss per stage, lr, kNN top-1) of a run, finished or still going."""
    check_run_target(run)
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
    from hicl import api
    from hicl.evaluate.probe_report import render_difference, render_probe

    stage_list = [part for item in stages or [] for part in item.split(",") if part] or None
    result = api.probe_invariance(target, stages=stage_list, compare=compare, images=images, weights=weights, out=out,
                                  console=console)
    table = Console()
    for p in result.targets:
        table.print(render_probe(p))
    if len(result.targets) == 2:
        table.print(render_difference(*result.targets))
    console.print("wrote " + ", ".join(str(p) for p in result.files))


@app.command()
@user_errors
def plan(
    manifest: ManifestArg,
    set_: Overrides = None,
    fit_batch: Annotated[bool, typer.Option("--fit-batch", help="Find the largest batch that fits in memory.")] = False,
    max_memory: Annotated[
        str | None, typer.Option(metavar="SIZE", help="--fit-batch's limit, e.g. 2GiB (90% of it is used); default the device's memory.")
    ] = None,
    steps: Annotated[int, typer.Option(metavar="N", min=1, max=1000, help="Timed steps (after 2 warm-up steps).")] = 5,
) -> None:
    """Measure a run before launching it: images/s, epoch and schedule time, peak memory, checkpoint size."""
    from hicl.manifest import load_manifest

    resolved = load_manifest(manifest, set_)
    from hicl.train.plan import plan_and_report

    try:
        plan_and_report(resolved, console, fit_batch=fit_batch, max_memory=max_memory, steps=steps)
    except KeyboardInterrupt:
        typer.echo("interrupted; nothing was written", err=True)
        raise typer.Exit(130) from None


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
    interval: Annotated[str, typer.Option(metavar="KIND", help="95 % intervals over seeds: normal (mean ± 1.96 sd/√n) or student (t quantile: wider with few seeds).")] = "normal",
) -> None:
    """Rank the manifest's augmentation ops by what removing each costs (kNN top-1 of short pilots)."""
    from hicl.pilots import Interrupted
    from hicl.ranking.leave_one_out import RankRequest
    from hicl.ranking.run import run_ranking

    if method not in ("leave-one-out", "probe"):
        raise HiclError(f"--method: expected leave-one-out or probe (got {method!r})")
    if interval not in ("normal", "student"):
        raise HiclError(f"--interval: expected normal or student (got {interval!r})")
    request = RankRequest(Path(manifest), tuple(set_ or []), _seed_list(seeds), epochs, jobs, linear, head, prefix,
                          method.replace("-", "_"), images, interval == "student")
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


@app.command()
@user_errors
def embed(
    target: Annotated[str, typer.Argument(metavar="TARGET", help="Run directory, checkpoint directory, timm or hicl export folder.")],
    data: Annotated[str, typer.Option(metavar="PATH", help="A folder of images (searched recursively) or a manifest (its data).")],
    out: Annotated[Path, typer.Option(metavar="FILE", help="Output: FILE.safetensors or FILE.npy, with FILE.csv (index, name, labels).")],
    stage: Annotated[str, typer.Option(metavar="STAGE", help="last, all, a 1-based stage index or name.")] = "last",
    split: Annotated[str, typer.Option(metavar="SPLIT", help="With a manifest: pretrain, train or test.")] = "train",
    batch_size: Annotated[int, typer.Option(metavar="N", min=1, help="Images per forward pass.")] = 256,
    progress: Annotated[bool, typer.Option(help="Show the progress bar.")] = True,
) -> None:
    """Features of every image (streamed to FILE, never all in memory), with image names and labels."""
    from hicl import api

    result = api.embed(target, data, stage, batch_size, split=split, out=out, progress=progress, console=console)
    console.print(f"embedded at {result.images_per_s:.0f} img/s; wrote " + ", ".join(str(p) for p in result.files))


@app.command("runs")
@user_errors
def runs_command(
    folder: Annotated[Path, typer.Argument(metavar="DIR", help="Folder of run directories (default runs/).")] = Path("runs"),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of the table.")] = False,
    compare: Annotated[
        tuple[Path, Path] | None, typer.Option(metavar="A B", help="Two runs: their manifest difference and results side by side.")
    ] = None,
) -> None:
    """The runs under DIR: method, backbone, data, epochs, state, final loss, latest linear / kNN top-1."""
    from hicl.run_list import compare_runs, list_runs, render_comparison, render_runs

    if compare is not None:
        compared = compare_runs(*compare)
        if as_json:
            typer.echo(json.dumps(compared, indent=2))
        else:
            Console(width=None if sys.stdout.isatty() else 200).print(*render_comparison(compared))
        return
    summaries = list_runs(folder)
    if as_json:
        typer.echo(json.dumps([s.as_dict() for s in summaries], indent=2))
    else:
        Console(width=None if sys.stdout.isatty() else 200).print(render_runs(summaries))  # piped: one row per line


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
