"""What a manifest's `method` section can say: each method's config, and their union.

Kept apart from the method modules (which subclass `torch.nn.Module` and so load torch) so that reading
a manifest does not load torch. Adding a method: its config class here (a `MethodConfig` subclass whose
`name` is a one-value literal, the name manifests use) and its module in this package, whose class sets
`Config` to it and is decorated with `hicl.methods.registry.register`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Discriminator, Field, Tag

from hicl.config import Momentum, NonNegativeFloat, PositiveFloat, Section, Width

DEFAULT_METHOD = "simsiam"

class MethodConfig(Section):
    """Keys every method has: the projector's widths."""

    name: str
    proj_hidden_dim: Width = 2048
    proj_dim: Width = 2048


class SimSiamConfig(MethodConfig):
    name: Literal["simsiam"] = "simsiam"
    pred_hidden_dim: Width = 512
    fixed_predictor_lr: bool = Field(True, description="the predictor keeps the base lr (no decay)")


class BYOLConfig(MethodConfig):
    name: Literal["byol"] = "byol"
    pred_hidden_dim: Width = 512
    momentum: Momentum = Field(0.99, description="base EMA decay of the target, raised to 1 along a cosine")


class BarlowTwinsConfig(MethodConfig):
    name: Literal["barlow_twins"] = "barlow_twins"
    lambd: NonNegativeFloat = Field(3.9e-3, description="weight of the off-diagonal terms (the paper's lambda)")
    scale: PositiveFloat = Field(1 / 32, description="factor on the whole loss")


class SimCLRConfig(MethodConfig):
    name: Literal["simclr"] = "simclr"
    temperature: PositiveFloat = Field(0.2, description="softmax temperature t")


class MoCoV2Config(MethodConfig):
    name: Literal["moco_v2"] = "moco_v2"
    temperature: PositiveFloat = Field(0.2, description="softmax temperature t")
    queue_size: Annotated[int, Field(gt=0, le=1_048_576)] = Field(4096, description="negatives kept per stage")
    momentum: Momentum = Field(0.99, description="EMA decay of the target (constant)")


METHOD_CONFIGS: dict[str, type[MethodConfig]] = {
    config.model_fields["name"].default: config
    for config in (SimSiamConfig, BYOLConfig, BarlowTwinsConfig, SimCLRConfig, MoCoV2Config)
}


def _method_tag(value: Any) -> str:
    # A section without `name` is the default method, as before the registry existed.
    if isinstance(value, dict):
        return value.get("name", DEFAULT_METHOD)
    return getattr(value, "name", DEFAULT_METHOD)


def method_config_union() -> Any:
    """The pydantic type of the `method` section: a union of every method's config, tagged by `name`."""
    names = sorted(METHOD_CONFIGS)
    members = tuple(Annotated[METHOD_CONFIGS[name], Tag(name)] for name in names)
    unknown = f"unknown method.name; expected one of {', '.join(names)}"
    tagged = Discriminator(_method_tag, custom_error_type="method_name", custom_error_message=unknown)
    return Annotated[Union[members], tagged]  # noqa: UP007 (a union built at run time)


def default_method_config() -> MethodConfig:
    return METHOD_CONFIGS[DEFAULT_METHOD]()
