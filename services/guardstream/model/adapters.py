"""The adapter registry: which LoRA adapters exist and which one serves each tenant.

A directory (`GUARDSTREAM_ADAPTER_DIR`) on storage every triage and scorer replica can read (a
shared volume in Kubernetes): `adapters/<id>/` holds each registered adapter's files (copied
in, so the registry owns them), and `registry.json` says what exists and what serves:
`{"generation": n, "adapters": {id: {path, tenant, registered_at, card}}, "serving":
{tenant or "*": id}, "shadow": {tenant or "*": id}, "history": [...]}`.
An adapter is registered (not used), a shadow candidate of its tenant (scored beside the
serving adapter on live traffic, its verdicts recorded and never actioned), serving, or retired
(out of shadow without promotion); its card holds the evidence of every step, including who
approved it for serving (`approve`: its card's `approval` and a history entry).
Writers (the feedback job, an operator) change it under a file lock and replace it atomically;
readers re-read it when its modification time changes, so a promotion reaches running
processes within one poll without a restart. Every write adds one to `generation`; a reader's
`generation` is that of the registry it serves from now, so "this process has taken the
promotion" is observable (triage and the scorer re-read it in the background, `watch`, and
report it on `/healthz` as `adapter_generation`).

What is read is checked, not only what is written (the file sits on a shared volume anyone
with write access could edit): an entry whose id is not a valid id, whose path resolves
(symlinks followed) outside `adapters/` of the registry root, or whose directory holds a link
leading out of it is dropped with an error log, so a tenant it would serve gets the base model
and vLLM's LoRA loader never reads a file outside the registry. `Adapter.path` is the resolved
directory.

An adapter whose card says `trained_with_reasons` (its targets carried reviewers' reasons,
`feedback/dataset.py`) has `Adapter.trained_with_reasons`: the scorer lets it write its
rationale after the label (`scorer/vllm_engine.py`).

Triage puts the serving adapter's id into the content key and the score request, so cached
verdicts of the previous adapter are never reused; the scorer serves whichever adapter the
request names (one vLLM engine, one LoRA request per adapter) and, for a tenant with a shadow
candidate, scores the same input with the candidate too (`scorer/service.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from guardstream.contracts.errors import PermanentError
from guardstream.contracts.events import Id

log = logging.getLogger(__name__)

EVERY_TENANT = "*"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_TENANT = re.compile(r"^(\*|[a-z0-9][a-z0-9_-]{0,62})$")
_APPROVER: TypeAdapter[str] = TypeAdapter(Id)  # a reviewer or staff id, as reviews store them


class AdapterError(PermanentError, ValueError):
    """A registry operation that cannot be done (unknown id, bad name, missing files)."""


@dataclass(frozen=True, slots=True)
class Adapter:
    adapter_id: str
    path: Path
    tenant: str
    registered_at: str
    trained_with_reasons: bool = False


def _with_reasons(card: Any) -> bool:
    return isinstance(card, dict) and card.get("trained_with_reasons") is True


@dataclass(frozen=True, slots=True)
class Snapshot:
    adapters: dict[str, Adapter]
    serving: dict[str, str]
    shadow: dict[str, str] = field(default_factory=dict)
    generation: int = 0  # the registry file's write count when this was read

    def serving_for(self, tenant: str) -> Adapter | None:
        """The tenant's own adapter, else the one serving every tenant, else none (base)."""
        chosen = self.serving.get(tenant, self.serving.get(EVERY_TENANT))
        return self.adapters.get(chosen) if chosen else None

    def shadow_for(self, tenant: str) -> Adapter | None:
        """The candidate to score `tenant`'s traffic with beside the serving adapter: the
        tenant's own candidate, else the every-tenant one — but only for a tenant that the
        every-tenant adapter serves (a candidate is compared with what it would replace)."""
        chosen = self.shadow.get(tenant)
        if chosen is None and tenant not in self.serving:
            chosen = self.shadow.get(EVERY_TENANT)
        serving = self.serving_for(tenant)
        if chosen is None or (serving is not None and serving.adapter_id == chosen):
            return None
        return self.adapters.get(chosen)


_EMPTY = Snapshot({}, {}, {})


class AdapterRegistry:
    def __init__(self, root: Path, poll_s: float = 5.0) -> None:
        self.root = root
        self._file = root / "registry.json"
        self._poll_s = poll_s
        self._snapshot = _EMPTY
        self._seen: tuple[int, int, int, int] | None = None
        self._checked = -float("inf")

    # --- reading ------------------------------------------------------------------------
    def snapshot(self, *, fresh: bool = False) -> Snapshot:
        """The registry as last read; re-read when the file changed (checked at most once per
        `poll_s`, or now with `fresh`)."""
        now = time.monotonic()
        if fresh or now - self._checked >= self._poll_s:
            self._checked = now
            try:
                stat = self._file.stat()
            except FileNotFoundError:
                self._snapshot, self._seen = _EMPTY, None
                return self._snapshot
            # Each write replaces the file: a new inode. The modification time alone can
            # repeat for two writes in one clock tick of the file system (a few ms).
            version = (stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size)
            if version != self._seen:
                self._snapshot, self._seen = self._read(), version
        return self._snapshot

    @property
    def generation(self) -> int:
        """The generation of the registry this reader serves from now (0: none read yet)."""
        return self._snapshot.generation

    async def watch(self, stop: asyncio.Event) -> None:
        """Re-read the registry every `poll_s` until `stop`, so a change is taken (and its
        generation shown) even while no request asks. An unreadable file keeps what was read
        before and is tried again at the next poll."""
        while not stop.is_set():
            try:
                self.snapshot(fresh=True)
            except (OSError, ValueError) as exc:  # half-edited by hand, a volume hiccup
                log.warning("adapter registry unreadable", extra={"error": type(exc).__name__})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._poll_s)

    def serving_for(self, tenant: str) -> Adapter | None:
        return self.snapshot().serving_for(tenant)

    def shadow_for(self, tenant: str) -> Adapter | None:
        return self.snapshot().shadow_for(tenant)

    def card(self, adapter_id: str) -> dict[str, Any]:
        """The adapter's card as the registry holds it now (read fresh, for writers)."""
        data = json.loads(self._file.read_text(encoding="utf-8")) if self._file.exists() else {}
        entry = data.get("adapters", {}).get(adapter_id)
        if entry is None:
            raise AdapterError(f"no adapter {adapter_id!r} is registered")
        card: dict[str, Any] = entry.get("card", {})
        return card

    def get(self, adapter_id: str) -> Adapter | None:
        found = self.snapshot().adapters.get(adapter_id)
        return found if found is not None else self.snapshot(fresh=True).adapters.get(adapter_id)

    def _read(self) -> Snapshot:
        data = json.loads(self._file.read_text(encoding="utf-8"))
        adapters: dict[str, Adapter] = {}
        for adapter_id, entry in _mapping(data.get("adapters")).items():
            try:
                adapters[adapter_id] = self._checked_entry(adapter_id, entry)
            except AdapterError as exc:
                log.error(  # noqa: TRY400 - the reason is the message; no traceback to add
                    "adapter entry dropped",
                    extra={"adapter": repr(adapter_id)[:80], "why": str(exc)},
                )
        generation = data.get("generation")
        return Snapshot(
            adapters,
            _choices(data.get("serving"), adapters),
            _choices(data.get("shadow"), adapters),
            generation if type(generation) is int and generation >= 0 else 0,
        )

    def _checked_entry(self, adapter_id: str, entry: Any) -> Adapter:
        """`entry` as an `Adapter` whose files all lie inside this registry's `adapters/`."""
        if not _ID.match(adapter_id):
            raise AdapterError("not a valid adapter id")
        if not isinstance(entry, dict):
            raise AdapterError("not an object")
        relative, tenant, registered_at = (
            entry.get(k) for k in ("path", "tenant", "registered_at")
        )
        if not (
            isinstance(relative, str) and isinstance(tenant, str) and isinstance(registered_at, str)
        ):
            raise AdapterError("path, tenant and registered_at must be strings")
        if not _TENANT.match(tenant):
            raise AdapterError("not a valid tenant")
        home = (self.root / "adapters").resolve()
        try:
            path = (self.root / relative).resolve(strict=True)
            outside = [
                f.name for f in path.iterdir() if not f.resolve(strict=True).is_relative_to(path)
            ]
        except (OSError, RuntimeError, ValueError) as exc:  # missing, a link loop, a NUL
            raise AdapterError(f"path does not resolve ({type(exc).__name__})") from None
        if path == home or not path.is_relative_to(home) or not path.is_dir():
            raise AdapterError("path is not a directory inside the registry's adapters/")
        if outside:
            raise AdapterError(f"links leading out of the adapter directory: {outside[:3]}")
        return Adapter(adapter_id, path, tenant, registered_at, _with_reasons(entry.get("card")))

    # --- writing ------------------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".lock").open("a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                data: dict[str, Any] = (
                    json.loads(self._file.read_text(encoding="utf-8"))
                    if self._file.exists()
                    else {"adapters": {}, "serving": {}}
                )
                yield data
                previous = data.get("generation")
                data["generation"] = (previous if type(previous) is int and previous > 0 else 0) + 1
                fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".registry.")
                with os.fdopen(fd, "w", encoding="utf-8") as out:
                    json.dump(data, out, indent=2, ensure_ascii=False, default=str)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, self._file)
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
        self._checked = -float("inf")

    def register(
        self,
        adapter_id: str,
        source: Path,
        card: dict[str, Any] | None = None,
        tenant: str = EVERY_TENANT,
    ) -> Adapter:
        """Copy a peft adapter directory in under `adapter_id` (not serving yet)."""
        if not _ID.match(adapter_id):
            raise AdapterError(f"adapter id {adapter_id!r}: letters, digits, '.', '_', '-'")
        if not (source / "adapter_config.json").is_file():
            raise AdapterError(f"{source} is not a peft adapter (no adapter_config.json)")
        relative = Path("adapters") / adapter_id
        target = self.root / relative
        with self._locked() as data:
            if adapter_id in data["adapters"]:
                raise AdapterError(f"adapter {adapter_id!r} is already registered")
            if target.exists():
                shutil.rmtree(target)  # a copy left by a crashed register
            shutil.copytree(source, target)
            registered_at = datetime.now(UTC).isoformat()
            data["adapters"][adapter_id] = {
                "path": str(relative),
                "tenant": tenant,
                "registered_at": registered_at,
                "card": card or {},
            }
        return Adapter(adapter_id, target, tenant, registered_at, _with_reasons(card))

    def promote(self, adapter_id: str, tenant: str | None = None) -> None:
        """Serve `adapter_id` for its tenant (or `tenant`): takes effect at the next poll."""
        with self._locked() as data:
            entry = _registered(data, adapter_id)
            scope = tenant or entry["tenant"]
            data["serving"][scope] = adapter_id
            if data.get("shadow", {}).get(scope) == adapter_id:
                del data["shadow"][scope]  # promoted out of shadow
            data.setdefault("history", []).append(
                {"at": datetime.now(UTC).isoformat(), "tenant": scope, "serving": adapter_id}
            )

    def start_shadow(self, adapter_id: str, tenant: str | None = None) -> str | None:
        """Make `adapter_id` the shadow candidate of its tenant (or `tenant`): scorers score
        that tenant's traffic with it too from their next poll, and action none of it. Returns
        the candidate it replaced, if any (that one leaves shadow unpromoted)."""
        now = datetime.now(UTC).isoformat()
        with self._locked() as data:
            entry = _registered(data, adapter_id)
            scope = tenant or entry["tenant"]
            shadow = data.setdefault("shadow", {})
            replaced = shadow.get(scope)
            if replaced is not None and replaced != adapter_id:
                data["adapters"][replaced].setdefault("card", {})["shadow_outcome"] = {
                    "at": now,
                    "outcome": "superseded",
                    "why": f"replaced in shadow by {adapter_id}",
                }
            shadow[scope] = adapter_id
            entry.setdefault("card", {})["shadow_since"] = now
            data.setdefault("history", []).append(
                {"at": now, "tenant": scope, "shadow": adapter_id}
            )
        return replaced if replaced != adapter_id else None

    def end_shadow(self, adapter_id: str, outcome: str, why: str) -> None:
        """Take `adapter_id` out of shadow without promoting it (retired), saying why."""
        now = datetime.now(UTC).isoformat()
        with self._locked() as data:
            entry = _registered(data, adapter_id)
            shadow = data.setdefault("shadow", {})
            for scope in [s for s, chosen in shadow.items() if chosen == adapter_id]:
                del shadow[scope]
                data.setdefault("history", []).append(
                    {"at": now, "tenant": scope, "shadow": None, "retired": adapter_id}
                )
            entry.setdefault("card", {})["shadow_outcome"] = {
                "at": now,
                "outcome": outcome,
                "why": why,
            }

    def approve(self, adapter_id: str, by: str) -> dict[str, str]:
        """Record that the person `by` approved `adapter_id` for serving (its card's
        `approval` and a history entry): promotion out of shadow waits for this unless the
        deployment opts into automatic promotion (`feedback/job.py`). Returns the record."""
        try:
            by = _APPROVER.validate_python(by)
        except ValidationError:
            raise AdapterError(
                f"approver id {by[:80]!r}: 1 to 128 characters, no control characters"
            ) from None
        record = {"by": by, "at": datetime.now(UTC).isoformat()}
        with self._locked() as data:
            entry = _registered(data, adapter_id)
            entry.setdefault("card", {})["approval"] = record
            data.setdefault("history", []).append(
                {**record, "tenant": entry["tenant"], "approved": adapter_id}
            )
        return record

    def history(self) -> list[dict[str, Any]]:
        """Every change to what serves or shadows, and every approval, oldest first."""
        data = json.loads(self._file.read_text(encoding="utf-8")) if self._file.exists() else {}
        history = data.get("history", [])
        return [h for h in history if isinstance(h, dict)] if isinstance(history, list) else []

    def update_card(self, adapter_id: str, fields: dict[str, Any]) -> None:
        """Merge `fields` into the adapter's card (shadow metrics, outcomes)."""
        with self._locked() as data:
            entry = _registered(data, adapter_id)
            entry.setdefault("card", {}).update(fields)

    def retire(self, tenant: str = EVERY_TENANT) -> None:
        """Serve the base model again for `tenant` (a rollback)."""
        with self._locked() as data:
            data["serving"].pop(tenant, None)
            data.setdefault("history", []).append(
                {"at": datetime.now(UTC).isoformat(), "tenant": tenant, "serving": None}
            )


def _mapping(value: Any) -> dict[str, Any]:
    return {k: v for k, v in value.items() if isinstance(k, str)} if isinstance(value, dict) else {}


def _choices(value: Any, adapters: dict[str, Adapter]) -> dict[str, str]:
    """A serving or shadow map, keeping only valid tenants that name a valid adapter."""
    return {
        tenant: chosen
        for tenant, chosen in _mapping(value).items()
        if _TENANT.match(tenant) and isinstance(chosen, str) and chosen in adapters
    }


def _registered(data: dict[str, Any], adapter_id: str) -> dict[str, Any]:
    """The registry entry of `adapter_id`; `AdapterError` if there is none."""
    entry: dict[str, Any] | None = data["adapters"].get(adapter_id)
    if entry is None:
        raise AdapterError(f"no adapter {adapter_id!r} is registered")
    return entry
