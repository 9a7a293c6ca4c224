"""The base of every configuration section and the annotated types they share.

Kept apart from `hicl.manifest` so that the modules whose configs the manifest collects (methods, data
sources) can define their own sections without importing the manifest that imports them.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
PositiveInt = Annotated[int, Field(gt=0)]

# Upper bounds keep a typo from allocating terabytes or running for years.
MAX_WIDTH = 16_384  # hidden/output widths of heads and embedders
MAX_BATCH = 65_536
MAX_EPOCHS = 100_000
MAX_IMAGES = 10_000_000
MAX_SIZE = 1024  # image and view side in pixels
Width = Annotated[int, Field(gt=0, le=MAX_WIDTH)]
PositiveFloat = Annotated[float, Field(gt=0.0)]
NonNegativeFloat = Annotated[float, Field(ge=0.0)]
Momentum = Annotated[float, Field(ge=0.0, le=1.0)]


class Section(BaseModel):
    """A manifest section: unknown keys are errors, assignments are validated."""

    # finite floats everywhere; types are strict when a manifest is read (`hicl.manifest.manifest_from_dict`)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
