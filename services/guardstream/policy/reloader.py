"""Taking a changed pack directory while a process runs: whole, checked, or not at all.

Every `GUARDSTREAM_POLICY_POLL_S` seconds the reloader hashes the pack files of
`GUARDSTREAM_POLICY_DIR` (`pack_digest`: the names and bytes of its `*.yaml` / `*.yml`
files, read through symlinks, so the `..data` swap of a Kubernetes ConfigMap reads like an
edit). A new digest is loaded with the start-up loader; only a set that loads without one
problem, and whose files did not change again while they were read, replaces the registry
in force (`PolicyRegistry.replace`, one assignment). Anything else is refused: the old set
stays, the reason is logged once per bad digest and counted in
`guardstream_policy_reloads_total{outcome="refused"}`.

One more check than at start-up: a pack that changed but kept its version is refused. A
decision names `id@version`; two different rule sets under one name would make that record
lie, and the per-pack memos keyed by it (prompt prefixes, content-key contexts) go stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import logging
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

from guardstream.policy.loader import PolicyLoadError, Problem, load_packs
from guardstream.policy.pack import PolicyPack
from guardstream.policy.registry import PolicyRegistry
from guardstream.runtime.metrics import meter

log = logging.getLogger(__name__)

# The packs shipped with guardstream, used when GUARDSTREAM_POLICY_DIR is unset.
PACKS_DIR = Path(__file__).with_name("packs")

reloads = meter.create_counter(
    "guardstream.policy.reloads",
    unit="{reload}",
    description="Changed policy pack directories seen, by process and outcome (applied, refused)",
)


class ReloadOutcome(enum.StrEnum):
    UNCHANGED = "unchanged"
    APPLIED = "applied"
    REFUSED = "refused"
    SETTLING = "settling"  # the files changed while they were read: try again next poll


@dataclass(frozen=True, slots=True)
class Reload:
    """What one check found. `reason` says why a set was refused (one problem a line)."""

    outcome: ReloadOutcome
    digest: str
    reason: str | None = None


def pack_files(directory: Path) -> list[Path]:
    """The files the loader reads, in its order (hidden history and temp files are not)."""
    return sorted({*directory.glob("*.yaml"), *directory.glob("*.yml")})


def pack_digest(directory: Path) -> str:
    """A hash of what the loader would read; changes exactly when a pack file does."""
    digest = hashlib.sha256()
    for path in pack_files(directory):
        try:
            # Only what the loader would read: a FIFO or device named *.yaml is not opened.
            body = path.read_bytes() if path.is_file() else b"not a regular file"
        except OSError as exc:  # gone between the listing and the read: a swap in progress
            body = f"unreadable: {type(exc).__name__}".encode()
        name = path.name.encode()
        digest.update(len(name).to_bytes(4, "big") + name)
        digest.update(len(body).to_bytes(8, "big") + body)
    return digest.hexdigest()


def unbumped(old: Sequence[PolicyPack], new: Sequence[PolicyPack]) -> list[Problem]:
    """Packs of `new` that differ from the pack of `old` with the same `id@version`."""
    before = {pack.ref: pack for pack in old}
    return [
        Problem(
            pack.id,
            "version",
            f"pack {pack.id!r} changed but kept version {pack.version!r}: give the change a new "
            "version (decisions name id@version)",
        )
        for pack in new
        if pack.ref in before and before[pack.ref] != pack
    ]


class PackReloader:
    """Keeps `registry` in step with `directory` (see the module docstring)."""

    def __init__(
        self,
        directory: Path,
        registry: PolicyRegistry,
        *,
        process: str,
        poll_s: float,
        digest: str | None = None,
    ) -> None:
        """`digest`: of the files `registry` was loaded from (now, when not given)."""
        self.directory = directory
        self.registry = registry
        self.process = process
        self.poll_s = poll_s
        self.digest = digest if digest is not None else pack_digest(directory)
        self.applied = 0  # sets put in force since start
        self._refused: str | None = None  # the digest last refused, logged once

    def check(self) -> Reload:
        """One poll: load and put in force a changed, valid, settled set; refuse a bad one."""
        seen = pack_digest(self.directory)
        if seen == self.digest:
            return Reload(ReloadOutcome.UNCHANGED, seen)
        if seen == self._refused:
            return Reload(ReloadOutcome.REFUSED, seen, "already refused")
        reason: str | None
        try:
            loaded = load_packs(self.directory)
        except PolicyLoadError as exc:
            reason = str(exc)
        else:
            problems = unbumped(self.registry.packs, loaded.packs)
            reason = str(PolicyLoadError(problems)) if problems else None
        if pack_digest(self.directory) != seen:
            return Reload(ReloadOutcome.SETTLING, seen)
        if reason is not None:
            return self._refuse(seen, reason)
        before = self.registry.versions()
        self.registry.replace(loaded)
        self.digest, self._refused = seen, None
        self.applied += 1
        reloads.add(1, {"process": self.process, "outcome": ReloadOutcome.APPLIED.value})
        log.info(
            "policy packs reloaded",
            extra={
                "service": self.process,
                "digest": seen[:12],
                "changed": _changes(before, loaded.versions()),
            },
        )
        return Reload(ReloadOutcome.APPLIED, seen)

    def _refuse(self, digest: str, reason: str) -> Reload:
        self._refused = digest
        reloads.add(1, {"process": self.process, "outcome": ReloadOutcome.REFUSED.value})
        log.error(
            "policy packs refused; the packs in force stay",
            extra={
                "service": self.process,
                "digest": digest[:12],
                "in_force": self.digest[:12],
                "why": reason,
            },
        )
        return Reload(ReloadOutcome.REFUSED, digest, reason)

    async def watch(self, stop: asyncio.Event) -> None:
        """`check` every `poll_s` until `stop`. A directory that cannot be read at all (a
        volume hiccup) keeps the packs in force and is tried again at the next poll."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.poll_s)
            if stop.is_set():
                return
            try:
                await asyncio.to_thread(self.check)
            except OSError as exc:
                log.warning(
                    "policy directory unreadable",
                    extra={"service": self.process, "error": type(exc).__name__},
                )

    def watch_in(self, stack: AsyncExitStack) -> None:
        """`watch` in the background until `stack` closes."""
        done = asyncio.Event()
        watching = asyncio.create_task(self.watch(done), name=f"{self.process}-policy-reload")

        async def stop_watching() -> None:
            done.set()
            await watching

        stack.push_async_callback(stop_watching)

    def status(self) -> dict[str, int]:
        """What `/healthz` shows: how many reloads this process has taken."""
        return {"policy_reloads": self.applied}


def load_watched(
    directory: Path | None, *, process: str, poll_s: float
) -> tuple[PolicyRegistry, PackReloader | None]:
    """The registry a process starts with, and the reloader that keeps it in step (not yet
    watching: `PackReloader.watch_in`).

    No reloader for the packs shipped with guardstream (`directory` unset: they change only
    with the installed package) or when `poll_s` is 0 (reloading switched off). The digest is
    taken before the load, so a change made while the process starts is taken at its first
    poll rather than missed."""
    if directory is None or poll_s <= 0:
        return load_packs(directory or PACKS_DIR), None
    digest = pack_digest(directory)
    registry = load_packs(directory)
    return registry, PackReloader(
        directory, registry, process=process, poll_s=poll_s, digest=digest
    )


def _changes(before: dict[str, str], after: dict[str, str]) -> str:
    parts = [
        f"{pack_id} {before.get(pack_id, '-')}→{after.get(pack_id, '-')}"
        for pack_id in sorted({*before, *after})
        if before.get(pack_id) != after.get(pack_id)
    ]
    return ", ".join(parts) or "no version changed"
