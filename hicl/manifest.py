"""The run manifest: every setting of a run as validated pydantic data.

A manifest is YAML with the sections below; unknown keys are errors. `load_manifest` reads it with
`hicl.safe_yaml` (size, encoding, duplicate-key, alias and depth limits), applies `--set
section.key=value` overrides and validates strictly (`manifest_from_dict`: no bool or string where a
number belongs, finite floats only); `dump_manifest` writes the resolved form (every default filled
in) that a run directory keeps, so the run can be repeated.
"""

from __future__ import annotations

import difflib
import json
import sys
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, Field, ValidationError, create_model, field_validator, model_validator

from hicl.augment.op import OPS, Op, check_op_names, op_names
from hicl.augment.ops import (  # importing the package registers the built-in ops; the configs are re-exported
    BlurConfig, ColorJitterConfig, CropConfig, FlipConfig, GrayscaleConfig, RotationConfig, SolarizeConfig,
)
from hicl.config import MAX_BATCH, MAX_EPOCHS, MAX_SIZE, MAX_WIDTH, PositiveInt, Section
from hicl.data import SOURCES, DataConfig
from hicl.data.synthetic import SyntheticSource
from hicl.errors import HiclError
from hicl.methods.configs import METHOD_CONFIGS, default_method_config, method_config_union
from hicl.registry import MODULE_NAME, import_plugins, module_record
from hicl.safe_yaml import read_yaml_file, read_yaml_text
from hicl.timm_names import is_timm_model, timm_model_names

__all__ = [
    "AugmentConfig", "BlurConfig", "ColorJitterConfig", "CropConfig", "FlipConfig", "GrayscaleConfig", "Manifest",
    "RotationConfig", "SolarizeConfig", "load_manifest", "manifest_from_dict", "manifest_model",
]

def _safe_name(name: str) -> str:
    """A single path component that cannot climb out of, or stand for, its parent directory."""
    if not (0 < len(name) <= 100) or name.startswith(".") or any(not (c.isascii() and (c.isalnum() or c in "._-")) for c in name):
        raise ValueError("expected a single file name: 1-100 letters, digits, '.', '_' or '-', not starting with '.'")
    return name


def _safe_dir(path: Path) -> Path:
    if "\x00" in str(path) or len(str(path)) > 4096:
        raise ValueError("expected a directory path without NUL characters, at most 4096 characters")
    return path


SafeName = Annotated[str, AfterValidator(_safe_name)]


# ------------------------------------------------------------------------------------------- backbone
class BackboneConfig(Section):
    name: str = "resnet18"
    small_stem: bool = Field(
        False, description="3x3 stride-1 stem without max-pool for 32 px images (ResNet-style models only)"
    )
    drop_path_rate: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    kwargs: dict[str, Any] = Field(
        {}, description="extra timm.create_model arguments, e.g. {img_size: 32, patch_size: 4} for a small ViT"
    )

    @field_validator("name")
    @classmethod
    def _known_model(cls, name: str) -> str:
        if not is_timm_model(name):
            close = difflib.get_close_matches(name, sorted(timm_model_names()), n=5, cutoff=0.6)
            hint = f" (similar: {', '.join(close)})" if close else ""
            raise ValueError(f"unknown timm model{hint}")
        return name

    @field_validator("kwargs")
    @classmethod
    def _not_hicl_owned(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        # hicl sets these itself, or they would load a pickle / change what the model returns.
        owned = {"pretrained", "num_classes", "drop_path_rate", "features_only", "checkpoint_path",
                 "pretrained_cfg", "pretrained_cfg_overlay", "out_indices", "global_pool"}
        taken = sorted(owned & set(kwargs))
        if taken:
            raise ValueError(f"{taken[0]!r} is set by hicl and cannot be passed to timm here")
        return kwargs


# --------------------------------------------------------------------------------------------- method
# Each method defines its own section (hicl/methods/<name>.py); `method.name` selects which one.
MethodSection = method_config_union()


# ------------------------------------------------------------------------------------------ hierarchy
class EmbeddingConfig(Section):
    """Expanded views: which augmentation parameters are embedded and at which stages."""

    ops: list[str] = ["color_jitter"]
    stages: list[PositiveInt] | None = Field(
        None, description="1-based stage numbers; default every stage but the first"
    )
    dim: Annotated[int, Field(gt=0, le=MAX_WIDTH)] | Literal["auto"] = Field(
        "auto", description="embedding width; auto: a quarter of the final feature width (the reference's 512 on 2048)"
    )
    encoding: Literal["reference", "normalized"] = Field(
        "reference",
        description="colour-jitter vector: reference = raw factors (b, c, s, h), identity (1, 1, 1, 0); "
        "normalized = (f - 1) / range, h / hue, identity 0",
    )

    _ops = field_validator("ops")(classmethod(lambda cls, v: check_op_names(v)))


class HierarchyConfig(Section):
    mode: Literal["off", "add_one", "uniform", "strength"] = "off"
    groups: list[list[str]] = [["crop", "color_jitter"], ["grayscale"], ["blur"], ["flip"]]
    stages: list[str] | None = Field(
        None, description="timm feature module names to tap; default: the last len(groups) stages"
    )
    forward: Literal["separate", "fused"] = "separate"
    adapter: Literal["sepconv", "pool_linear", "reference"] = "sepconv"
    bn: Literal["joint", "per_view"] = Field(
        "joint", description="per_view: every BatchNorm normalises each view's batch on its own (the reference)"
    )
    loss_weights: list[Annotated[float, Field(ge=0.0)]] | None = None
    embeddings: EmbeddingConfig = EmbeddingConfig()

    @field_validator("mode", mode="before")
    @classmethod
    def _yaml_off(cls, mode: object) -> object:
        # YAML 1.1 reads a bare `off` as the boolean false.
        return "off" if mode is False else mode

    @field_validator("groups")
    @classmethod
    def _groups(cls, groups: list[list[str]]) -> list[list[str]]:
        if not groups or any(not g for g in groups):
            raise ValueError("groups must be a non-empty list of non-empty op lists")
        check_op_names([op for g in groups for op in g])
        return groups

    @property
    def num_stages(self) -> int:
        """Stages that get their own views and loss (1 when the hierarchy is off)."""
        if self.mode == "off":
            return 1
        return len(self.stages) if self.stages is not None else len(self.groups)

    @model_validator(mode="after")
    def _consistent(self) -> HierarchyConfig:
        k = self.num_stages
        if self.mode == "add_one" and self.stages is not None and len(self.stages) != len(self.groups):
            raise ValueError(
                f"add_one needs one group per tapped stage: {len(self.groups)} groups for {len(self.stages)} stages"
            )
        if self.loss_weights is not None and len(self.loss_weights) != k:
            raise ValueError(f"loss_weights has {len(self.loss_weights)} entries for {k} stages")
        if self.embeddings.stages is not None and max(self.embeddings.stages, default=0) > k:
            raise ValueError(f"embeddings.stages names stage {max(self.embeddings.stages)} of {k}")
        return self


# -------------------------------------------------------------------------------------------- augment
# One section per registered op (`hicl.augment.op.OPS`), named after the op, in canonical order.
class NormalizeConfig(Section):
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[
        Annotated[float, Field(gt=0.0)], Annotated[float, Field(gt=0.0)], Annotated[float, Field(gt=0.0)]
    ] = (0.229, 0.224, 0.225)


def _module_name(name: str) -> str:
    if not MODULE_NAME.match(name):
        raise ValueError("expected an importable Python module name (my_package.my_ops), not a path")
    return name


def _with_sections(ops: list[str], sections: Iterable[str]) -> list[str]:
    """Ops another module registered in this process, but no plugin of this manifest, are not its ops."""
    foreign = [op for op in ops if op not in sections]
    if foreign:
        raise ValueError(f"augmentation op {foreign[0]!r} is registered by a module that augment.plugins does not name")
    return ops


class AugmentRules(Section):
    """The behaviour of the `augment` section; its fields come from the op registry (`augment_config_class`)."""

    @field_validator("ops", check_fields=False)
    @classmethod
    def _known_ops(cls, ops: list[str]) -> list[str]:
        check_op_names(ops)
        return _with_sections(ops, cls.model_fields)

    @model_validator(mode="after")
    def _views(self) -> AugmentRules:
        if len(self.views) not in (0, 2):
            raise ValueError(f"views: expected two override maps (view 1, view 2), got {len(self.views)}")
        for index, overrides in enumerate(self.views):
            for op, override in overrides.items():
                if op not in self.ops:
                    raise ValueError(
                        f"views.{index}.{op}: not an op of the pipeline (augment.ops: {', '.join(self.ops)})"
                    )
                self._overridden(op, override, f"views.{index}.{op}")
        return self

    def _overridden(self, op: str, override: dict[str, Any], where: str) -> Section:
        """The op's shared settings with a view's override, validated as strictly as the manifest."""
        shared = getattr(self, op)
        merged = {**shared.model_dump(mode="json"), **override}
        try:
            return type(shared).model_validate_json(json.dumps(merged), strict=True)
        except ValidationError as exc:
            raise ValueError(format_validation_error(exc, where)) from None

    def view(self, index: int) -> AugmentRules:
        """The settings of view `index` (0 or 1): the shared ones with that view's overrides."""
        if not self.views:
            return self
        overrides = self.views[index]
        return self.model_copy(update={op: self._overridden(op, o, f"views.{index}.{op}") for op, o in overrides.items()})


def _op_fields(ops: Iterable[Op]) -> dict[str, Any]:
    return {op.name: (op.config, op.default) for op in sorted(ops, key=lambda op: op.order)}


def augment_config_class(ops: Iterable[Op]) -> type[AugmentRules]:
    """The `augment` section for these ops: the pipeline, one section per op, normalisation, plugins, views."""
    return create_model(
        "AugmentConfig",
        __base__=AugmentRules,
        __module__=__name__,
        ops=(list[str], Field(
            ["crop", "color_jitter", "grayscale", "blur", "flip"],
            description="the full pipeline (last stage, or every stage when the hierarchy is off/uniform)",
        )),
        output_size=(
            Annotated[int, Field(ge=8, le=MAX_SIZE)] | None, Field(None, description="view size; default data.image_size")
        ),
        **_op_fields(ops),
        normalize=(NormalizeConfig, NormalizeConfig()),
        plugins=(list[Annotated[str, AfterValidator(_module_name)]], Field(
            [], description="Python modules that register more ops (hicl.augment.op.register_op), imported before "
            "the manifest is validated",
        )),
        views=(list[dict[str, dict[str, Any]]], Field(
            [], description="per-view recipes: two maps op -> settings that override the shared ones for view 1 "
            "and view 2, e.g. [{blur: {p: 1.0}}, {blur: {p: 0.1}}]; empty: both views share the settings",
        )),
    )


AugmentConfig = augment_config_class(OPS.values())


# ------------------------------------------------------------------------------------ optim, schedule
class OptimConfig(Section):
    name: Literal["sgd", "lars", "adamw"] = "sgd"
    lr: Annotated[float, Field(gt=0.0)] = Field(0.05, description="base lr; scaled by batch_size / 256")
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = Field(0.9, description="sgd, lars: momentum; adamw: beta1")
    trust_coefficient: Annotated[float, Field(gt=0.0)] = Field(
        0.001, description="lars: eta in the trust ratio eta * ||w|| / ||g + wd * w||"
    )
    weight_decay: Annotated[float, Field(ge=0.0)] = 5e-4
    batch_size: Annotated[int, Field(gt=0, le=MAX_BATCH)] = Field(
        256, description="the global batch; under torchrun each process takes batch_size / processes"
    )


class ScheduleConfig(Section):
    epochs: Annotated[int, Field(gt=0, le=MAX_EPOCHS)] = 10
    warmup_epochs: Annotated[int, Field(ge=0)] = 0

    @model_validator(mode="after")
    def _warmup(self) -> ScheduleConfig:
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be less than epochs ({self.epochs}); "
                             f"for a short run lower it too, e.g. --set schedule.warmup_epochs=0")
        return self


# ------------------------------------------------------------------------------------ runtime, eval, output
class RuntimeConfig(Section):
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    precision: Literal["fp32", "bf16"] = "fp32"
    threads: Annotated[int, Field(gt=0, le=1024)] | None = Field(None, description="CPU threads for torch; default: torch's choice")
    log_every: PositiveInt = Field(10, description="steps between metrics.jsonl lines")
    checkpoint_every: PositiveInt = Field(1, description="epochs between checkpoints (the last is always saved)")
    knn_every: PositiveInt | None = Field(
        None, description="every N epochs, kNN top-1 of the backbone on the labeled splits (eval.knn_k, knn_temperature)"
    )
    checkpoint_every_steps: PositiveInt | None = Field(
        None, description="also write a mid-epoch checkpoint every N steps (preemptible machines, long epochs)"
    )
    channels_last: bool = Field(
        False, description="NHWC memory format for the network and its inputs: faster convolutions on CPU and CUDA, "
        "but other float rounding (off by default so that existing manifests give the numbers they gave)"
    )
    keep_freed_memory: bool = Field(
        False, description="CPU (glibc): keep freed memory in the heap instead of mapping every tensor over 32 MiB "
        "afresh each step: faster large CPU steps, the process keeps its peak memory; process-wide"
    )
    compile: bool = Field(False, description="torch.compile the stage networks; graph breaks are logged")
    sync_bn: bool = Field(False, description="BatchNorm statistics over all processes under torchrun (CUDA)")
    loggers: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(
        [], description="experiment trackers beside metrics.jsonl, each an extra: pip install 'hicl[NAME]'"
    )
    mlflow_uri: str | None = Field(None, description="MLflow tracking URI; default a file store at OUTPUT_DIR/mlruns")
    health_every: PositiveInt | None = Field(
        None, description="steps between per-stage collapse checks (a multiple of log_every); default 10 x log_every"
    )
    collapse_threshold: Annotated[float, Field(gt=0.0, le=1.0)] = Field(
        0.1, description="a stage whose spread (std of its normalised projections x sqrt(dim); healthy ~1) is below "
        "this is collapsing"
    )
    collapse_patience: PositiveInt = Field(3, description="consecutive low checks before the collapse alarm")
    on_collapse: Literal["warn", "stop"] = Field(
        "warn", description="warn, or stop: write a checkpoint and exit with code 3 naming the stage"
    )

    @model_validator(mode="after")
    def _health_on_logging_steps(self) -> RuntimeConfig:
        # a check rides on a logged step's record, so that metrics.jsonl and the loggers carry it
        if self.health_every is not None and self.health_every % self.log_every:
            raise ValueError(f"health_every ({self.health_every}) must be a multiple of log_every ({self.log_every})")
        return self

    @property
    def health_interval(self) -> int:
        return self.health_every or 10 * self.log_every

    @field_validator("loggers")
    @classmethod
    def _loggers_once(cls, loggers: list[str]) -> list[str]:
        if len(set(loggers)) != len(loggers):
            raise ValueError("name each logger once")
        return loggers

    @field_validator("device")
    @classmethod
    def _device(cls, device: str) -> str:
        if device not in ("auto", "cpu", "cuda") and not (device.startswith("cuda:") and device[5:].isdigit()):
            raise ValueError("expected auto, cpu, cuda or cuda:N")
        return device


class EvalConfig(Section):
    heads: list[str] | None = Field(None, description="label heads to evaluate; default all the data has")
    epochs: Annotated[int, Field(gt=0, le=MAX_EPOCHS)] = 100
    lr: Annotated[float, Field(gt=0.0)] = 0.1
    batch_size: Annotated[int, Field(gt=0, le=MAX_BATCH)] = 256
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.0
    random_init_baseline: bool = Field(True, description="also evaluate the same backbone at random init")
    after_pretrain: bool = Field(False, description="run linear-eval at the end of pretrain")
    checkpoint: Path | None = Field(
        None, description="evaluate this checkpoint directory instead of the run's own (transfer to other data)"
    )
    protocol: Literal["fast", "paper"] = Field(
        "fast",
        description="fast: cached features, no augmentation; paper: SGD on augmented views (random-resized-crop"
        " + flip), lr x0.1 at each milestone, center crop at test (set lr, e.g. 30 for ResNet-50 on ImageNet)",
    )
    stage: str = Field("last", description="features to evaluate: last, all, a 1-based stage index or a stage name")
    milestones: list[Annotated[float, Field(gt=0.0, lt=1.0)]] = Field(
        [0.6, 0.8], description="paper protocol: fractions of the epochs at which the lr is multiplied by 0.1"
    )
    crop_scale: tuple[Annotated[float, Field(gt=0.0, le=1.0)], Annotated[float, Field(gt=0.0, le=1.0)]] = Field(
        (0.08, 1.0), description="paper protocol: random-resized-crop area range for training images"
    )
    knn_k: PositiveInt = Field(200, description="hicl knn: neighbours")
    knn_temperature: Annotated[float, Field(gt=0.0)] = Field(0.1, description="hicl knn: temperature of exp(sim/T)")

    @field_validator("stage", mode="before")
    @classmethod
    def _stage_index(cls, stage: object) -> object:
        # `--set eval.stage=2` and YAML `stage: 2` read the index as a number
        return str(stage) if isinstance(stage, int) and not isinstance(stage, bool) else stage


class OutputConfig(Section):
    dir: Annotated[Path, AfterValidator(_safe_dir)] = Path("runs")

    @field_validator("dir", mode="before")
    @classmethod
    def _not_empty(cls, path: object) -> object:
        # pathlib reads an empty string (`--set output.dir=`) as the current directory
        if isinstance(path, str) and not path.strip():
            raise ValueError("expected a directory path, got an empty one (write . for the current directory)")
        return path
    name: SafeName | None = Field(None, description="run directory name; default: the manifest's name")


class Manifest(Section):
    name: SafeName
    seed: Annotated[int, Field(ge=0, lt=2**32)] = 0
    data: DataConfig = SyntheticSource()
    backbone: BackboneConfig = BackboneConfig()
    method: MethodSection = Field(default_factory=default_method_config)
    hierarchy: HierarchyConfig = HierarchyConfig()
    augment: AugmentConfig = AugmentConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    eval: EvalConfig = EvalConfig()
    output: OutputConfig = OutputConfig()

    @model_validator(mode="after")
    def _hierarchy_ops_have_sections(self) -> Manifest:
        named = [op for group in self.hierarchy.groups for op in group] + list(self.hierarchy.embeddings.ops)
        try:
            _with_sections(named, type(self.augment).model_fields)
        except ValueError as exc:
            raise ValueError(f"hierarchy: {exc}") from None
        return self

    @model_validator(mode="after")
    def _blur_fits_view(self) -> Manifest:
        kernel = self.augment.blur.kernel_size
        if kernel is not None and kernel > self.view_size:
            raise ValueError(f"augment.blur.kernel_size: {kernel} is larger than the {self.view_size} px view")
        return self

    @model_validator(mode="after")
    def _img_size_is_the_view_size(self) -> Manifest:
        # a ViT built for another input size fails at its first forward; say so while validating
        img_size = self.backbone.kwargs.get("img_size")
        sides = img_size if isinstance(img_size, (list, tuple)) else [img_size]
        if img_size is not None and any(side != self.view_size for side in sides):
            raise ValueError(f"backbone.kwargs.img_size: {img_size} is not the {self.view_size} px view size; "
                             f"set backbone.kwargs.img_size={self.view_size} (or change augment.output_size)")
        return self

    @property
    def run_dir(self) -> Path:
        return self.output.dir / (self.output.name or self.name)

    @property
    def view_size(self) -> int:
        return self.augment.output_size or self.data.image_size


# ------------------------------------------------------------------------------------- load and dump
def parse_override(text: str) -> tuple[list[str], Any]:
    """`section.key=value` -> (["section", "key"], value); the value is read as YAML (numbers, lists)."""
    path, sep, raw = text.partition("=")
    if not sep or not path or any(not part for part in path.split(".")):
        raise HiclError(f"--set {_shown(text)}: expected section.key=value")
    value = read_yaml_text(raw, f"--set {_shown(text)}") if raw.strip() else raw
    return path.split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `--set` overrides in order; switching `data.source` or `method.name` keeps only the keys the
    new choice has (`--set data.source=folder` on a synthetic manifest drops `data.synthetic`)."""
    for text in overrides:
        keys, value = parse_override(text)
        node = raw
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise HiclError(f"--set {_shown(text)}: {_shown(key)} is not a section")
            node = child
        if len(keys) == 2 and node.get(keys[1]) != value:
            _keep_keys_of_new_choice(keys, node, value)
        node[keys[-1]] = value
    return raw


def _keep_keys_of_new_choice(keys: list[str], section: dict[str, Any], choice: Any) -> None:
    choices = {("data", "source"): {name: entry.config for name, entry in SOURCES.items()},
               ("method", "name"): METHOD_CONFIGS}.get((keys[0], keys[1]))
    config = choices.get(choice) if choices is not None and isinstance(choice, str) else None
    if config is not None:
        for key in [key for key in section if key not in config.model_fields]:
            del section[key]


def _without_union_tags(loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
    """pydantic puts the chosen config's tag into an error's location (`data.folder.root`,
    `method.simclr.temperature`); users wrote `data.root`, so the tag goes."""
    tags = {"data": SOURCES, "method": METHOD_CONFIGS}
    if len(loc) > 1 and loc[0] in tags and loc[1] in tags[loc[0]]:
        return loc[:1] + loc[2:]
    return loc


def _shown(value: Any, limit: int = 200) -> str:
    """`repr(value)`, cut to `limit` characters: an error line never floods the terminal."""
    return _cut(repr(value), limit)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_validation_error(exc: ValidationError, source: str, max_problems: int = 5) -> str:
    """One line: `source: field.path: what was expected (got value)` for each problem."""
    parts = []
    errors = exc.errors()
    for err in errors[:max_problems]:
        loc = _cut(".".join(str(p) for p in _without_union_tags(err["loc"])) or "manifest", 120)
        msg = err["msg"].removeprefix("Value error, ")
        got = err.get("input")
        shown = "" if err["type"] == "missing" or isinstance(got, dict) else f" (got {_shown(got)})"
        parts.append(f"{loc}: {msg}{shown}")
    if len(errors) > max_problems:
        parts.append(f"and {len(errors) - max_problems} more problems")
    return f"{source}: " + "; ".join(parts)


def _check_plain(value: Any, source: str, where: str = "") -> None:
    """Only what JSON can say: YAML's dates, binary and sets have no place in a manifest."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise HiclError(f"{source}: {where or 'manifest'}: key {_shown(key)} is not a string")
            _check_plain(item, source, f"{where}.{key}" if where else key)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_plain(item, source, f"{where}.{index}")
    elif not isinstance(value, (str, int, float, bool, type(None))):
        raise HiclError(
            f"{source}: {_cut(where, 120)}: expected a number, string, boolean, list or mapping "
            f"(got {type(value).__name__} {_shown(value, 80)})"
        )


@cache
def _manifest_with(plugin_ops: tuple[str, ...]) -> type[Manifest]:
    augment = create_model(
        "AugmentConfig", __base__=AugmentConfig, __module__=__name__, **_op_fields(OPS[name] for name in plugin_ops)
    )
    return create_model("Manifest", __base__=Manifest, __module__=__name__, augment=(augment, augment()))


def _from_plugin(op: Op, plugins: Sequence[str]) -> bool:
    """Whether one of these (imported) plugin modules, or a module inside one, defines the op's config."""
    module = op.config.__module__
    return any(module == name or module.startswith(name + ".") for name in plugins)


def manifest_model(plugins: Sequence[str] = ()) -> type[Manifest]:
    """The manifest class of a manifest naming these plugin modules: `Manifest`, extended by the sections
    of the ops they register (an op belongs to the module that defines its config). Ops that other
    modules registered in this process stay out, so a manifest's meaning never depends on them."""
    plugin_ops = tuple(
        name for name in op_names() if name not in AugmentConfig.model_fields and _from_plugin(OPS[name], plugins)
    )
    return _manifest_with(plugin_ops) if plugin_ops else Manifest


def plugin_modules(raw: dict[str, Any]) -> list[str]:
    """`augment.plugins` of a raw manifest (anything malformed is left for validation to report)."""
    augment = raw.get("augment")
    plugins = augment.get("plugins", []) if isinstance(augment, dict) else []
    return [p for p in plugins if isinstance(p, str)] if isinstance(plugins, list) else []


def plugin_records(manifest: Manifest) -> list[dict[str, str]]:
    """Each plugin module of the manifest (imported when it was validated) with its version or file hash."""
    return [module_record(sys.modules[name]) for name in manifest.augment.plugins]


def manifest_from_dict(raw: dict[str, Any], source: str = "manifest") -> Manifest:
    """Validate user input strictly: JSON mode with `strict=True` takes YAML lists for tuples and
    strings for paths, but never a bool or a string where a number belongs (`true` is not 1).

    The modules of `augment.plugins` are imported first, so that the ops they register validate."""
    _check_plain(raw, source)
    plugins = plugin_modules(raw)
    import_plugins(plugins, f"{source}: augment.plugins")
    try:
        return manifest_model(plugins).model_validate_json(json.dumps(raw), strict=True)
    except ValidationError as exc:
        raise HiclError(format_validation_error(exc, source)) from None


def load_manifest(path: Path | str, overrides: list[str] | None = None) -> Manifest:
    path = Path(path)
    if not path.is_file():
        raise HiclError(f"{path}: manifest not found")
    raw = read_yaml_file(path)
    if not isinstance(raw, dict):
        raise HiclError(f"{path}: expected a mapping of sections at the top level")
    return manifest_from_dict(apply_overrides(raw, overrides or []), str(path))


def manifest_to_dict(manifest: Manifest) -> dict[str, Any]:
    return manifest.model_dump(mode="json")


def dump_manifest(manifest: Manifest) -> str:
    return yaml.safe_dump(manifest_to_dict(manifest), sort_keys=False)

