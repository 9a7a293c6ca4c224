"""Experiment trackers as callbacks, chosen by `runtime.loggers` (metrics.jsonl is always written).

Each logger is an optional extra (`pip install 'hicl[tensorboard]'`, `'hicl[mlflow]'`, `'hicl[wandb]'`) and
receives what metrics.jsonl receives, under these names:

    loss/total, loss/stage_K, lr, images_per_s                  every `runtime.log_every` steps (x: the step)
    epoch_loss/total, epoch_loss/stage_K, epoch_images_per_s    every epoch (x: the step it ended at)
    knn_top1/HEAD                                               every `runtime.knn_every` epochs
    health/{spread,effective_rank,view_cosine}_stage_K          every `runtime.health_every` steps

plus the resolved manifest as hyperparameters at the start and the run's plot (training.png) at the end.
Only rank 0 logs. A resumed run continues the same tracker run: TensorBoard writes into the same folder
(`RUN/tensorboard`, with a purge step at the checkpoint, so replayed steps replace the old ones); MLflow
and W&B reopen the run whose id `RUN/loggers.json` records. MLflow writes to a local file store,
`OUTPUT_DIR/mlruns` (`mlflow ui --backend-store-uri OUTPUT_DIR/mlruns`), unless `runtime.mlflow_uri`
names another; W&B runs offline (`wandb sync RUN/wandb/...` uploads) unless the user has logged in.
"""

from __future__ import annotations

import importlib.util
import json
import os
import uuid
from abc import ABC, abstractmethod
from typing import Any

from hicl.errors import HiclError
from hicl.manifest import Manifest, dump_manifest, manifest_to_dict
from hicl.runs import RunDir
from hicl.train.callbacks import TRAINING_PLOT, Callback, RunState

# logger name -> (the module it needs, the extra that installs it)
LOGGER_EXTRAS = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow"), "wandb": ("wandb", "wandb")}
IDS_FILE = "loggers.json"


def check_loggers(names: list[str]) -> None:
    """A one-line error, before anything is built, for a chosen logger whose package is not installed."""
    for name in names:
        module, extra = LOGGER_EXTRAS[name]
        if importlib.util.find_spec(module) is None:
            raise HiclError(f"runtime.loggers: {name} is not installed; pip install 'hicl[{extra}]'")


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """A metrics.jsonl record as the named scalars every logger writes."""
    if record["kind"] == "knn":
        return {f"knn_top1/{record['head']}": record["top1"]}
    prefix = "" if record["kind"] == "step" else "epoch_"
    values = {f"{prefix}loss/total": record["loss"], f"{prefix}images_per_s": record["images_per_s"]}
    values |= {f"{prefix}loss/stage_{k + 1}": v for k, v in enumerate(record["stage_losses"])}
    for figure in ("spread", "effective_rank", "view_cosine"):  # the collapse monitor's, on its steps
        values |= {f"health/{figure}_stage_{k + 1}": v for k, v in enumerate(record.get(figure, []))}
    return values | ({"lr": record["lr"]} if record["kind"] == "step" else {})


def flat_params(manifest: Manifest) -> dict[str, str]:
    """The resolved manifest as `section.key: value` strings (hyperparameters for MLflow)."""
    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        else:
            flat[prefix] = json.dumps(value) if not isinstance(value, str) else value

    walk("", manifest_to_dict(manifest))
    return flat


class ScalarLogger(Callback, ABC):
    """Sends each step's, epoch's and kNN record to `write(values, step)`; subclasses open and close the run."""

    @abstractmethod
    def write(self, values: dict[str, float], step: int) -> None:
        """Log `values` (name -> scalar) at `step`."""

    def on_step_end(self, run: RunState, record: dict[str, Any] | None) -> None:
        if record is not None:
            self.write(scalars(record), record["step"])

    def on_epoch_end(self, run: RunState, records: list[dict[str, Any]]) -> None:
        for record in records:
            self.write(scalars(record), record["step"])


def read_ids(run: RunDir) -> dict[str, Any]:
    path = run.path / IDS_FILE
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (ValueError, UnicodeDecodeError):
        raise HiclError(f"{path}: not valid JSON; delete it to start new logger runs") from None


def write_id(run: RunDir, name: str, value: Any) -> None:
    """Remember a logger's run id, so that --resume continues that run."""
    ids = read_ids(run) | {name: value}
    run.inside(run.path / IDS_FILE).write_text(json.dumps(ids, indent=2) + "\n")


class TensorBoardLogger(ScalarLogger):
    """Event files in RUN/tensorboard (`tensorboard --logdir RUN/tensorboard`)."""

    def on_run_start(self, run: RunState) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: steps past the checkpoint, written by the interrupted session, give way to the replayed ones
        self.writer = SummaryWriter(str(run.run.inside(run.run.path / "tensorboard")), purge_step=None if run.resumed_step is None else run.resumed_step + 1)
        if run.resumed_step is None:
            self.writer.add_text("manifest", f"```yaml\n{dump_manifest(run.manifest)}\n```", 0)

    def write(self, values: dict[str, float], step: int) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)

    def on_run_end(self, run: RunState, error: BaseException | None) -> None:
        plot = run.run.results / TRAINING_PLOT
        if error is None and plot.is_file():
            from matplotlib.image import imread

            self.writer.add_image("training", imread(plot)[..., :3], run.step, dataformats="HWC")
        self.writer.close()


class MlflowLogger(ScalarLogger):
    """A run in an MLflow tracking store (a local file store by default), in the experiment `hicl`."""

    def __init__(self, uri: str):
        self.uri = uri

    def on_run_start(self, run: RunState) -> None:
        if self.uri.startswith("file:"):  # MLflow 3 keeps its file store only on request; hicl's default needs it
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.uri)
        known = read_ids(run.run).get("mlflow")
        if run.resumed_step is not None and isinstance(known, str):
            self.run_id = known
            self.client.update_run(known, status="RUNNING")
            return
        experiment = self.client.get_experiment_by_name("hicl")
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment("hicl")
        self.run_id = self.client.create_run(experiment_id, run_name=run.manifest.name).info.run_id
        write_id(run.run, "mlflow", self.run_id)
        params = [Param(k, v[:6000]) for k, v in flat_params(run.manifest).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[start : start + 100])

    def write(self, values: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def on_run_end(self, run: RunState, error: BaseException | None) -> None:
        plot = run.run.results / TRAINING_PLOT
        if error is None and plot.is_file():
            self.client.log_artifact(self.run_id, str(plot))
        self.client.set_terminated(self.run_id, "FINISHED" if error is None else "KILLED")


class WandbLogger(ScalarLogger):
    """A Weights & Biases run in RUN/wandb; offline unless the user has logged in (or set WANDB_MODE)."""

    def on_run_start(self, run: RunState) -> None:
        import wandb

        known = read_ids(run.run).get("wandb")
        run_id = known if run.resumed_step is not None and isinstance(known, str) else uuid.uuid4().hex[:8]
        write_id(run.run, "wandb", run_id)
        logged_in = bool(os.environ.get("WANDB_API_KEY")) or os.environ.get("WANDB_MODE") == "online"
        self.run = wandb.init(project="hicl", name=run.manifest.name, id=run_id, resume="allow",
                              dir=str(run.run.path), config=manifest_to_dict(run.manifest),
                              mode=os.environ.get("WANDB_MODE", "online" if logged_in else "offline"))

    def write(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def on_run_end(self, run: RunState, error: BaseException | None) -> None:
        import wandb

        plot = run.run.results / TRAINING_PLOT
        if error is None and plot.is_file():
            self.run.log({"training": wandb.Image(str(plot))}, step=run.step)
        self.run.finish(exit_code=0 if error is None else 1)


def mlflow_uri(manifest: Manifest) -> str:
    """`runtime.mlflow_uri`, else a file store beside the runs (OUTPUT_DIR/mlruns)."""
    return manifest.runtime.mlflow_uri or (manifest.output.dir.resolve() / "mlruns").as_uri()


def logger_callbacks(manifest: Manifest) -> list[Callback]:
    """The loggers `runtime.loggers` names, in that order (for rank 0)."""
    makers = {"tensorboard": TensorBoardLogger, "mlflow": lambda: MlflowLogger(mlflow_uri(manifest)), "wandb": WandbLogger}
    return [makers[name]() for name in manifest.runtime.loggers]
