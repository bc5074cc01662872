"""Which pack applies to a post: every (tenant, region) is claimed by at most one pack.

Resolution, most specific first:

1. a pack naming the post's tenant and its region,
2. a pack naming the tenant without regions,
3. a `"*"` pack naming the region,
4. the default pack (`tenants: ["*"]`, no regions), which must exist.

A tenant's own pack beats a region-wide default (3) because the tenant's team wrote it for
that tenant; a region rule that must bind every tenant needs a (tenant, region) pack per tenant.
Regions compare without regard to case; a post without a region only matches 2 and 4.
Ambiguity is refused when the registry is built, never resolved by file order.

A/B: when the resolved pack names an `experiment:` and the caller gives the post's subject
(author id, else post id), the subject's arm (`policy.experiment`) picks the pack in force or
its candidate. A candidate pack (`candidate: true`) claims nothing itself, must be named by
exactly one pack's experiment and list that pack's tenants and regions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from guardstream.contracts.errors import PermanentError
from guardstream.contracts.events import Arm
from guardstream.policy.experiment import arm_of
from guardstream.policy.pack import DEFAULT_TENANT, PolicyPack

Claim = tuple[str, str | None]  # (tenant or "*", casefolded region or None)


@dataclass(frozen=True, slots=True)
class Clash:
    """A conflict between packs (or a missing default); `pack_ids` says whose files to fix."""

    pack_ids: tuple[str, ...]
    field: str
    message: str


class PolicyConflictError(PermanentError, ValueError):
    """The packs cannot form a registry; `clashes` lists every reason at once."""

    def __init__(self, clashes: Sequence[Clash]) -> None:
        super().__init__("; ".join(f"{c.field}: {c.message}" for c in clashes))
        self.clashes = tuple(clashes)


def claims(pack: PolicyPack) -> list[Claim]:
    if pack.candidate:  # decides only the posts an experiment sends it
        return []
    regions: Sequence[str | None] = (
        [r.casefold() for r in pack.regions] if pack.regions is not None else [None]
    )
    return [(tenant, region) for tenant in pack.tenants for region in regions]


def find_clashes(packs: Sequence[PolicyPack]) -> list[Clash]:
    """Everything that stops `packs` from forming a registry, in a stable order."""
    clashes: list[Clash] = []
    by_id: dict[str, PolicyPack] = {}
    for pack in packs:
        if pack.id in by_id:
            clashes.append(Clash((pack.id,), "id", f"two packs have the id {pack.id!r}"))
        by_id.setdefault(pack.id, pack)
    owner: dict[Claim, str] = {}
    for pack in packs:
        for claim in claims(pack):
            first = owner.setdefault(claim, pack.id)
            if first != pack.id:
                clashes.append(
                    Clash((first, pack.id), "tenants", f"{_claim_text(claim)} is claimed twice")
                )
    clashes.extend(experiment_clashes(packs, by_id))
    if (DEFAULT_TENANT, None) not in owner:
        clashes.append(
            Clash((), "tenants", 'no default pack: one pack needs tenants: ["*"] and no regions')
        )
    return clashes


def experiment_clashes(packs: Sequence[PolicyPack], by_id: dict[str, PolicyPack]) -> list[Clash]:
    """Experiments naming no candidate pack, candidates no experiment names (or two do)."""
    clashes: list[Clash] = []
    named_by: dict[str, list[str]] = {}
    for pack in packs:
        if pack.experiment is None:
            continue
        wanted = pack.experiment.candidate
        named_by.setdefault(wanted, []).append(pack.id)
        candidate = by_id.get(wanted)
        if candidate is None:
            clashes.append(
                Clash((pack.id,), "experiment.candidate", f"no pack has the id {wanted!r}")
            )
        elif not candidate.candidate:
            clashes.append(
                Clash(
                    (pack.id, wanted),
                    "experiment.candidate",
                    f"pack {wanted!r} is not marked candidate: true (it serves posts itself)",
                )
            )
        elif (candidate.tenants, candidate.regions) != (pack.tenants, pack.regions):
            clashes.append(
                Clash(
                    (pack.id, wanted),
                    "experiment.candidate",
                    f"candidate {wanted!r} must list the tenants and regions of {pack.id!r}",
                )
            )
    for pack in packs:
        if not pack.candidate:
            continue
        namers = named_by.get(pack.id, [])
        if not namers:
            clashes.append(
                Clash(
                    (pack.id,),
                    "candidate",
                    f"candidate pack {pack.id!r} is named by no experiment: it can never decide",
                )
            )
        elif len(namers) > 1:
            clashes.append(
                Clash(
                    (pack.id, *namers),
                    "candidate",
                    f"candidate pack {pack.id!r} is named by {len(namers)} experiments",
                )
            )
    return clashes


@dataclass(frozen=True, slots=True)
class _InForce:
    packs: tuple[PolicyPack, ...]
    by_claim: dict[Claim, PolicyPack]
    by_id: dict[str, PolicyPack]


class PolicyRegistry:
    """The packs in force, indexed by what they claim.

    Every process holds one registry for its whole life; a reload (`policy.reloader`) puts a
    newly loaded set in force with `replace`, one attribute assignment, so a reader sees the
    old set or the new one, never a mix. Callers take one pack per decision (`for_post`) and
    decide with that immutable pack: a reload mid-decision cannot change its rules.
    """

    def __init__(self, packs: Iterable[PolicyPack]) -> None:
        found = tuple(packs)
        clashes = find_clashes(found)
        if clashes:
            raise PolicyConflictError(clashes)
        self._in_force = _InForce(
            found, {claim: p for p in found for claim in claims(p)}, {p.id: p for p in found}
        )

    def replace(self, other: PolicyRegistry) -> None:
        """Put `other`'s packs in force here, all at once (both were checked when built)."""
        self._in_force = other._in_force

    @property
    def packs(self) -> tuple[PolicyPack, ...]:
        return self._in_force.packs

    @property
    def default(self) -> PolicyPack:
        return self._in_force.by_claim[(DEFAULT_TENANT, None)]

    def for_post(self, tenant: str, region: str | None, subject: str | None = None) -> PolicyPack:
        """The pack deciding a post. `subject` (the author id, else the post id) places the
        post in an arm of its pack's experiment; without it the pack in force decides (callers
        with a decision at hand look its pack up with `by_ref` instead)."""
        in_force = self._in_force  # one read: the set in force when the post came
        by_claim = in_force.by_claim
        folded = region.casefold() if region else None
        for claim in ((tenant, folded), (tenant, None), (DEFAULT_TENANT, folded)):
            pack = by_claim.get(claim)
            if pack is not None:
                break
        else:
            pack = by_claim[(DEFAULT_TENANT, None)]
        experiment = pack.experiment
        if experiment is None or subject is None:
            return pack
        if arm_of(experiment, tenant, subject) is Arm.CANDIDATE:
            return in_force.by_id[experiment.candidate]
        return pack

    def by_ref(self, ref: str) -> PolicyPack | None:
        """The pack a decision names (`id@version`), when that version is still loaded."""
        for pack in self._in_force.packs:
            if pack.ref == ref:
                return pack
        return None

    def versions(self) -> dict[str, str]:
        """Pack id → version, for start-up logs and health output."""
        return {pack.id: pack.version for pack in self._in_force.packs}


def _claim_text(claim: Claim) -> str:
    tenant, region = claim
    who = "every tenant" if tenant == DEFAULT_TENANT else f"tenant {tenant!r}"
    return f"{who} in region {region!r}" if region is not None else f"{who} (any region)"
