"""hicl from Python: the functions the command line calls, with the same results and the same errors.

    import hicl
    result = hicl.pretrain({"name": "demo", "data": {"source": "synthetic"}}, overrides=["schedule.epochs=1"])
    model, data_config = hicl.load_backbone(result.run_dir)
    features = hicl.embed(result.run_dir, "photos/").last

Every mistake a user can make raises `hicl.HiclError` with the CLI's one-line message. `import hicl` does
not import this module (nor torch): `hicl.pretrain` and the others load it on first use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from hicl.errors import HiclError
from hicl.manifest import Manifest, load_manifest, manifest_from_dict

if TYPE_CHECKING:
    import torch

    from hicl.evaluate.backbone_target import Backbone
    from hicl.evaluate.embed import Embeddings
    from hicl.evaluate.probe_report import ProbedTarget
    from hicl.export.base import ExportResult
    from hicl.train.callbacks import Callback
    from hicl.train.loop import PretrainResult

_quiet = Console(stderr=True, soft_wrap=True, quiet=True)


def _console(progress: bool) -> Console:
    return Console(stderr=True, soft_wrap=True) if progress else _quiet


def resolve_manifest(manifest: str | Path | dict[str, Any] | Manifest, overrides: list[str] | None = None,
                     resume: bool = False) -> Manifest:
    """A manifest from a YAML path, a dict or a `Manifest`, `section.key=value` overrides applied; with
    `resume`, a run directory gives its own manifest, pointed at where the run now is."""
    if isinstance(manifest, Manifest):
        return manifest if not overrides else _from_dict(manifest.model_dump(mode="json"), overrides)
    if isinstance(manifest, dict):
        return _from_dict(manifest, overrides or [])
    path = Path(manifest)
    if path.is_dir():
        if not resume and not (path / "manifest.yaml").is_file():
            raise HiclError(f"{path}: is a directory but not a run directory (no manifest.yaml); give a manifest file")
        if not resume:
            raise HiclError(f"{path}: is a run directory; pass --resume to continue it, or give a manifest file")
        if not (path / "manifest.yaml").is_file():
            raise HiclError(f"{path}: not a hicl run directory (no manifest.yaml)")
        return _resumed(path, overrides)
    return load_manifest(path, overrides)


def _from_dict(raw: dict[str, Any], overrides: list[str]) -> Manifest:
    from hicl.manifest import apply_overrides

    return manifest_from_dict(apply_overrides(raw, overrides) if overrides else raw)


def _resumed(run_dir: Path, overrides: list[str] | None) -> Manifest:
    resolved = load_manifest(run_dir / "manifest.yaml", overrides)
    if resolved.run_dir.resolve() != run_dir.resolve():  # the run was moved or is given by another path
        output = resolved.output.model_copy(update={"dir": run_dir.resolve().parent, "name": run_dir.resolve().name})
        resolved = resolved.model_copy(update={"output": output})
    return resolved


@dataclass
class Pretrained:
    """What `pretrain` did (`PretrainResult`'s figures) and, when `eval.after_pretrain`, the linear evaluation."""

    result: PretrainResult
    linear_eval: dict[str, Any] | None = None

    @property
    def run_dir(self) -> Path:
        return self.result.run_dir

    @property
    def final_loss(self) -> float:
        return self.result.final_loss

    def summary(self) -> str:
        return self.result.summary()


def pretrain(
    manifest: str | Path | dict[str, Any] | Manifest,
    overrides: list[str] | None = None,
    resume: bool = False,
    *,
    overwrite: bool = False,
    progress: bool = False,
    verify: bool = True,
    init_from: str | Path | None = None,
    callbacks: list[Callback] | None = None,
    console: Console | None = None,
) -> Pretrained:
    """Pretrain as the manifest says (a YAML path, a dict or a `Manifest`; with `resume`, also a run
    directory); the run directory, the final figures and, if `eval.after_pretrain`, the linear evaluation.
    A stop signal raises `hicl.train.signals.Stopped` after writing a checkpoint."""
    if resume and overwrite:
        raise HiclError("--resume and --overwrite exclude each other: continue the run, or start it afresh")
    if resume and init_from is not None:
        raise HiclError("--init-from: a resumed run continues from its own checkpoint; pass either --resume or --init-from")
    resolved = resolve_manifest(manifest, overrides, resume)  # a bad manifest is reported before torch is loaded
    from hicl.checkpoint import set_verification
    from hicl.lock import RunLock
    from hicl.train.dist import read_env
    from hicl.train.loop import pretrain as run_pretrain
    from hicl.train.outcome import RunOutcome

    set_verification(verify)
    console = console or _console(progress)
    result = run_pretrain(resolved, resume=resume, overwrite=overwrite, console=console, show_progress=progress,
                          init_from=None if init_from is None else Path(init_from),
                          callbacks=[RunOutcome(), *(callbacks or [])])
    done = Pretrained(result)
    if read_env().rank == 0 and resolved.eval.after_pretrain and not result.nothing_left:
        from hicl.evaluate.linear import linear_eval as run_linear_eval
        from hicl.runs import RunDir

        with RunLock(result.run_dir):
            done.linear_eval = run_linear_eval(resolved, RunDir(result.run_dir), console)
    return done


def _eval_overrides(overrides: list[str] | None, stage: str | None, protocol: str | None = None) -> list[str]:
    return [*(overrides or []), *([f"eval.stage={stage}"] if stage is not None else []),
            *([f"eval.protocol={protocol}"] if protocol is not None else [])]


def linear_eval(run: str | Path, overrides: list[str] | None = None, *, stage: str | None = None,
                protocol: str | None = None, verify: bool = True, console: Console | None = None) -> dict[str, Any]:
    """Linear probes on the run's frozen features (as `hicl linear-eval`); the dict written to
    results/linear_eval.json: per stage and label head, pretrained (and random-init) top-1 / top-5."""
    from hicl.checkpoint import set_verification
    from hicl.evaluate.linear import linear_eval as run_linear_eval
    from hicl.lock import RunLock
    from hicl.runs import open_run

    set_verification(verify)
    run_dir, manifest = open_run(run, _eval_overrides(overrides, stage, protocol))
    if not run_dir.path.is_dir():
        raise HiclError(f"{run_dir.path}: no such run directory (run hicl pretrain first)")
    with RunLock(run_dir.path):
        return run_linear_eval(manifest, run_dir, console or _quiet)


def knn(run: str | Path, overrides: list[str] | None = None, *, stage: str | None = None,
        console: Console | None = None) -> dict[str, Any]:
    """Weighted kNN on the run's frozen features (as `hicl knn`); the dict written to results/knn.json."""
    from hicl.evaluate.knn_eval import knn_eval
    from hicl.runs import open_run

    run_dir, manifest = open_run(run, _eval_overrides(overrides, stage))
    return knn_eval(manifest, run_dir, console or _quiet)


def export(run: str | Path, out: str | Path, format: str = "timm", *, overwrite: bool = False, pth: bool = False,
           dynamic_size: bool = False, overrides: list[str] | None = None, verify: bool = True) -> ExportResult:
    """Export the run's backbone (or whole model) as `format` into the folder `out`, with its model card
    (as `hicl export`); the files written and the lines that say how to load them."""
    from hicl.checkpoint import set_verification
    from hicl.export.base import ExportOptions, exporter, run_export
    from hicl.lock import RunLock
    from hicl.runs import open_run

    exporter(format)  # an unknown format is named before anything is opened
    set_verification(verify)
    run_dir, _ = open_run(run, overrides)
    if not run_dir.path.is_dir():
        raise HiclError(f"{run_dir.path}: no such run directory (run hicl pretrain first)")
    with RunLock(run_dir.path, read_only_ok=True):
        return run_export(Path(run), format, Path(out), overwrite=overwrite,
                          options=ExportOptions(pth=pth, dynamic_size=dynamic_size), overrides=overrides)


@dataclass
class Probed:
    """`probe_invariance`'s targets probed (one, or two with `compare`) and the files written."""

    targets: list[ProbedTarget]
    files: list[Path] = field(default_factory=list)


def probe_invariance(target: str | Path, *, stages: list[str] | None = None, compare: str | Path | None = None,
                     images: int = 512, weights: str | Path | None = None, out: str | Path | None = None,
                     console: Console | None = None) -> Probed:
    """Per stage and augmentation op, invariance and predictability on held-out images (as
    `hicl probe-invariance`); writes invariance.json/.csv/.png to `out` (default: the run's results/)."""
    from hicl.evaluate.probe_report import default_out, probe_targets, write_outputs
    from hicl.evaluate.probe_target import open_probe_target

    if images < 8:
        raise HiclError(f"--images: {images}; at least 8 held-out images are needed")
    targets = [open_probe_target(str(target), None if weights is None else Path(weights))]
    if compare is not None:
        targets.append(open_probe_target(str(compare)))
    probed = probe_targets(targets, stages, images, console or _quiet)
    return Probed(probed, write_outputs(probed, Path(out) if out is not None else default_out(targets[0])))


def load_backbone(target: str | Path, *, verify: bool = True) -> Backbone:
    """A run directory (or its manifest), a checkpoint, a timm or hicl export folder, or a timm model name:
    the timm model in eval mode and its data config (`model, data_config = hicl.load_backbone(...)`)."""
    from hicl.checkpoint import set_verification
    from hicl.evaluate.backbone_target import load_backbone as open_backbone

    set_verification(verify)
    return open_backbone(target)


def embed(
    target: str | Path | Backbone,
    data: str | Path | dict[str, Any] | Manifest | torch.Tensor,
    stage: str | list[str] = "last",
    batch_size: int = 256,
    *,
    split: str = "train",
    out: str | Path | None = None,
    device: str | None = None,
    progress: bool = False,
    console: Console | None = None,
) -> Embeddings:
    """Pooled features of every image of `data` (a folder searched recursively, a manifest whose data
    section's `split` is read, or uint8 images [N, 3, H, W]) at `stage` (last, all, an index or a name,
    or a list), with labels and image names where there are any; with `out` (.safetensors or .npy, each
    with a .csv index) streamed to disk instead of returned. Runs on `device` (default: the run's)."""
    from hicl.evaluate.backbone_target import Backbone
    from hicl.evaluate.embed import embed as run_embed
    from hicl.evaluate.embed import embed_data
    from hicl.evaluate.feature_file import check_out
    from hicl.train.device import resolve_device

    if out is not None:
        check_out(Path(out))
    backbone = target if isinstance(target, Backbone) else load_backbone(target)
    source = embed_data(data, backbone, split, batch_size)
    runtime = backbone.manifest.runtime if device is None else backbone.manifest.runtime.model_copy(update={"device": device})
    stages = [stage] if isinstance(stage, str) else list(stage)
    return run_embed(backbone, source, stages, None if out is None else Path(out), resolve_device(runtime),
                     console or _console(progress), progress)


def list_runs(folder: str | Path = "runs") -> list[dict[str, Any]]:
    """What `hicl runs` lists: per run name, method, backbone, hierarchy, data, epochs done / planned,
    state (finished, stopped, collapsed, diverged, failed, running, interrupted, new), final loss, linear / kNN top-1."""
    from hicl.run_list import list_runs as summaries

    return [summary.as_dict() for summary in summaries(Path(folder))]


__all__ = ["embed", "export", "knn", "linear_eval", "load_backbone", "pretrain", "probe_invariance", "resolve_manifest",
           "list_runs", "Pretrained", "Probed"]
