"""Erasure on request: what to erase (a `Selector`), what each store removed (`StoreReceipt`)
and the run over every store (`erase`), apart from any store's I/O.

A selector is always one tenant's: one or more of its post ids, or one of its authors. Each
store sits behind an `Eraser`: it may first `discover` what it knows about the target (the
review store maps an author to post ids, a task to content keys; the archive a post to its
content key), then `erase` it, or with `dry_run` count what it would remove. Discovery runs
until nothing new is learnt, so a store that learns a content key from another still finds
it. The receipt says, per store, what was found and removed; ids in it are hashed with the
tenant (`hashed`), and it never holds text.

Hostile input is refused before any store is touched (`InvalidSelector`, a 4xx / CLI exit 2).
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Annotated, Protocol

from pydantic import BaseModel, ConfigDict, Field

from guardstream.contracts.errors import PermanentError
from guardstream.contracts.events import allowed_characters, utcnow

_TENANT = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
MAX_ID_CHARS = 128  # contracts `Id`
# Post ids in one request: larger erasures go by author or in several runs. At 200 ids of the
# longest (128 characters) a request is ~26 KB, within the review API's 64 KiB body limit, so a
# list one id too long is answered 422 naming the field rather than 413 for its size.
MAX_POSTS = 200


class InvalidSelector(PermanentError, ValueError):
    """An erasure request naming no valid tenant, post or author: refused, nothing touched."""

    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(f"{field_name}: {reason}")
        self.field = field_name
        self.reason = reason


def _checked_id(field_name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidSelector(field_name, "must be a non-empty string")
    if len(value) > MAX_ID_CHARS:
        raise InvalidSelector(field_name, f"at most {MAX_ID_CHARS} characters")
    if not allowed_characters(value):
        raise InvalidSelector(field_name, "control characters or lone surrogates are not ids")
    return value


@dataclass(frozen=True, slots=True)
class Selector:
    """What one request erases: `post_ids` of `tenant`, or everything of `author_id` there."""

    tenant: str
    post_ids: tuple[str, ...] = ()
    author_id: str | None = None

    @property
    def kind(self) -> str:
        return "author" if self.author_id is not None else "post"


def selector(
    tenant: object, *, posts: Sequence[object] = (), author: object | None = None
) -> Selector:
    """The one maker of a `Selector`: checks every field, raises `InvalidSelector`."""
    if not isinstance(tenant, str) or not _TENANT.fullmatch(tenant):
        raise InvalidSelector("tenant", "1-63 of a-z, 0-9, '_' and '-', starting alphanumeric")
    if bool(posts) == (author is not None):
        raise InvalidSelector("selector", "name post ids or one author, not both or neither")
    if len(posts) > MAX_POSTS:
        raise InvalidSelector("post", f"at most {MAX_POSTS} post ids per request")
    if author is not None:
        return Selector(tenant, author_id=_checked_id("author", author))
    ids = tuple(dict.fromkeys(_checked_id("post", p) for p in posts))
    return Selector(tenant, post_ids=ids)


def hashed(tenant: str, value: str, *, purpose: bytes = b"gs-erase-id") -> str:
    """A stable, tenant-scoped pseudonym of an id (receipts, the author index): the same id of
    another tenant hashes differently. 128 bits; blake2b `person` separates the uses."""
    h = hashlib.blake2b(digest_size=16, person=purpose[:16])
    for part in (tenant, value):
        encoded = part.encode("utf-8", "surrogatepass")
        h.update(len(encoded).to_bytes(4, "big"))
        h.update(encoded)
    return h.hexdigest()


def author_key(tenant: str, author_id: str) -> str:
    """How the review store's author index names an author (never the id itself)."""
    return hashed(tenant, author_id, purpose=b"gs-author-key1")


@dataclass(frozen=True, slots=True)
class Target:
    """What the stores know the selector covers so far (grown by `discover`)."""

    selector: Selector
    post_ids: frozenset[str] = frozenset()
    content_keys: frozenset[str] = frozenset()
    # The earliest review of an erased post: adapters trained on the archive after it may
    # have learnt from it.
    earliest_review: datetime | None = None

    @property
    def tenant(self) -> str:
        return self.selector.tenant

    def merge(self, other: Target) -> Target:
        earliest = [t for t in (self.earliest_review, other.earliest_review) if t is not None]
        return replace(
            self,
            post_ids=self.post_ids | other.post_ids,
            content_keys=self.content_keys | other.content_keys,
            earliest_review=min(earliest) if earliest else None,
        )

    def learnt(self, posts: Iterable[str] = (), keys: Iterable[str] = ()) -> Target:
        return replace(self, post_ids=frozenset(posts), content_keys=frozenset(keys))


def initial_target(sel: Selector) -> Target:
    return Target(sel, post_ids=frozenset(sel.post_ids))


class StoreReceipt(BaseModel):
    """One store's part of a receipt: counts and hashed ids, never text."""

    model_config = ConfigDict(frozen=True)

    store: str
    found: Annotated[int, Field(ge=0)]
    removed: Annotated[int, Field(ge=0)]  # 0 on a dry run
    ids: tuple[str, ...] = ()  # hashed (`hashed`) ids of what was found
    note: str = ""  # how the store forgets (tombstone, rewrite, retention bound)


class ErasureReceipt(BaseModel):
    """What one erasure found and removed where (`guardstream erase`, the admin route)."""

    model_config = ConfigDict(frozen=True)

    receipt_id: str
    tenant: str
    selector: str  # "post" or "author"
    subject: tuple[str, ...]  # the hashed post ids or author id asked for
    requested_by: str
    at: datetime
    dry_run: bool
    posts: tuple[str, ...]  # hashed post ids the stores found
    stores: tuple[StoreReceipt, ...]

    @property
    def removed(self) -> int:
        return sum(s.removed for s in self.stores)

    def store(self, name: str) -> StoreReceipt:
        return next(s for s in self.stores if s.store == name)


class Eraser(Protocol):
    """One store's eraser. `discover` returns what the store knows the target covers (post ids,
    content keys, the earliest review) without changing anything; `erase` removes the target's
    data (with `dry_run`: only counts it). Stores never raise for data they lack."""

    name: str

    async def discover(self, target: Target) -> Target: ...

    async def erase(self, target: Target, dry_run: bool) -> StoreReceipt: ...


@dataclass
class Erasure:
    """The run over every store; stores erase in the order given (the sources others rebuild
    from first: the review store before the verdict cache it restores human verdicts into)."""

    erasers: Sequence[Eraser]
    rounds: int = 3  # discovery passes at most: each can only add ids, so it settles fast
    clock: Callable[[], datetime] = utcnow

    async def resolve(self, sel: Selector) -> Target:
        target = initial_target(sel)
        for _ in range(self.rounds):
            before = target
            for eraser in self.erasers:
                target = target.merge(await eraser.discover(target))
            if target == before:
                break
        return target

    async def run(
        self, sel: Selector, *, dry_run: bool, requested_by: str, receipt_id: str | None = None
    ) -> ErasureReceipt:
        target = await self.resolve(sel)
        stores = tuple([await e.erase(target, dry_run) for e in self.erasers])
        at = self.clock()
        subject = (sel.author_id,) if sel.author_id is not None else sel.post_ids
        return ErasureReceipt(
            receipt_id=receipt_id or new_receipt_id(),
            tenant=sel.tenant,
            selector=sel.kind,
            subject=tuple(hashed(sel.tenant, s) for s in subject),
            requested_by=requested_by,
            at=at,
            dry_run=dry_run,
            posts=tuple(sorted(hashed(sel.tenant, p) for p in target.post_ids)),
            stores=stores,
        )


def new_receipt_id() -> str:
    return f"er-{uuid.uuid4().hex}"


def receipt_ids(tenant: str, values: Iterable[str]) -> tuple[str, ...]:
    """Hashed ids for a `StoreReceipt`, sorted so two runs read alike."""
    return tuple(sorted({hashed(tenant, v) for v in values}))
