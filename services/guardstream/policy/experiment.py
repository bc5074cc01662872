"""A/B experiments between packs: which arm an author (or a post) is in, stably (pure).

A pack in force may name an `experiment:` — a candidate pack (`candidate: true`, claiming no
posts of its own) and the percentage of its posts the candidate decides instead. Posts are
split by a stable hash of (tenant, candidate pack id, author id — or post id when the post has
no author), so one author always sees one arm while the experiment runs, another tenant's
split is independent, and raising the percentage only moves authors from control to
candidate (a bucket under the old share stays under the new one). The hash takes any string:
ids reach it already checked by the contracts, but a lone surrogate or NUL does not raise.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Final

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictStr

from guardstream.contracts.events import Arm

BUCKETS: Final = 10_000  # percent to two decimals: 0.01 % is one bucket

PackIdRef = Annotated[StrictStr, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$")]


def _number(value: object) -> object:
    # YAML reads `"10"` as text and `yes` as a boolean: neither is a share of traffic.
    if isinstance(value, bool) or not isinstance(value, int | float):
        # pydantic reports a ValueError as the field's problem; a TypeError would escape it.
        raise ValueError("write a number from 0 to 100 (a percentage of the posts)")  # noqa: TRY004
    return value


Percent = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False), BeforeValidator(_number)]


class Experiment(BaseModel):
    """`experiment:` of a pack in force: `candidate` (a pack id) decides `percent` of its posts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    candidate: PackIdRef
    percent: Percent

    @property
    def share(self) -> int:
        """The candidate's buckets out of `BUCKETS`."""
        return round(self.percent * BUCKETS / 100)


def bucket(tenant: str, salt: str, subject: str) -> int:
    """A post's bucket in [0, BUCKETS): uniform over subjects, the same on every process."""
    raw = "\x1f".join((tenant, salt, subject)).encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.sha256(raw).digest()[:8], "big") % BUCKETS


def arm_of(experiment: Experiment, tenant: str, subject: str) -> Arm:
    """The arm of `subject` (author id, else post id) in `tenant` under `experiment`."""
    inside = bucket(tenant, experiment.candidate, subject) < experiment.share
    return Arm.CANDIDATE if inside else Arm.CONTROL
