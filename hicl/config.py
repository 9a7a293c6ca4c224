"""The base of every configuration section and the annotated types they share.

Kept apart from `hicl.manifest` so that the modules whose configs the manifest collects (methods, data
sources) can define their own sections without importing the manifest that imports them.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0.0)]
NonNegativeFloat = Annotated[float, Field(ge=0.0)]
Momentum = Annotated[float, Field(ge=0.0, le=1.0)]


class Section(BaseModel):
    """A manifest section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
