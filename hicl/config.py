"""The base of every manifest section, and the value types sections share.

Kept apart from `hicl.manifest` so that the modules which define their own section (data sources,
methods) can import it without importing the manifest that collects them.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
PositiveInt = Annotated[int, Field(gt=0)]


class Section(BaseModel):
    """A manifest section: unknown keys are errors, and assignments are validated too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
