"""Which post a piece of work is about: one identity sub-model, shared by everything that
follows a post after its decision (the review task and its row, the SLA item, the shadow
record).

`PostIdentity` names a post within its tenant (another tenant's post with the same post_id
is another post), the event that carried it, the policy it was judged under and its content
key (what verdicts are cached and human labels joined on). It is made in one place from any
event that carries the five fields (`PostIdentity.of`), and spread back onto events that carry
them flat on the wire (`fields()`): the wire format (schemas/*.json) does not change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, TypedDict


class Identified(Protocol):
    """Anything carrying the five identity fields flat (events, tasks, SLA items)."""

    @property
    def tenant(self) -> str: ...

    @property
    def post_id(self) -> str: ...

    @property
    def post_event_id(self) -> str: ...

    @property
    def policy(self) -> str: ...

    @property
    def content_key(self) -> str: ...


class IdentityFields(TypedDict):
    """The identity as keyword arguments of an event that carries it flat."""

    tenant: str
    post_id: str
    post_event_id: str
    policy: str
    content_key: str


@dataclass(frozen=True, slots=True)
class PostIdentity:
    tenant: str
    post_id: str
    post_event_id: str  # the Post event's id
    policy: str  # the policy pack reference it was judged under ("default@1")
    content_key: str  # the serving content key: cache entries and human labels join on it

    @classmethod
    def of(cls, source: Identified) -> PostIdentity:
        return cls(
            tenant=source.tenant,
            post_id=source.post_id,
            post_event_id=source.post_event_id,
            policy=source.policy,
            content_key=source.content_key,
        )

    def fields(self) -> IdentityFields:
        return IdentityFields(
            tenant=self.tenant,
            post_id=self.post_id,
            post_event_id=self.post_event_id,
            policy=self.policy,
            content_key=self.content_key,
        )


class HasIdentity:
    """Read-only access to an `identity` attribute's fields as if they were the holder's own
    (`task.tenant`): readers keep their spelling, the fields live once, in `identity`."""

    __slots__ = ()
    identity: PostIdentity

    @property
    def tenant(self) -> str:
        return self.identity.tenant

    @property
    def post_id(self) -> str:
        return self.identity.post_id

    @property
    def post_event_id(self) -> str:
        return self.identity.post_event_id

    @property
    def policy(self) -> str:
        return self.identity.policy

    @property
    def content_key(self) -> str:
        return self.identity.content_key
