"""Who is calling: reviewers and their credentials (passwords, API tokens, console sessions),
the credential lifecycle of the `guardstream review` admin commands, and the audit of refusals.

Credentials are read on every request, never remembered: a revoked token, a changed password
or a disabled reviewer is refused from the next request on, on every replica. The hashing
primitives (scrypt, token and session formats) are `review.auth`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from guardstream.contracts.events import AssignmentEvent, utcnow
from guardstream.review import auth
from guardstream.review import metrics as review_metrics
from guardstream.review.logic import Reviewer, assignment
from guardstream.review.services.common import Service, publish
from guardstream.review.services.errors import Unauthenticated
from guardstream.review.shield import DeniedAudit
from guardstream.review.store import ReviewStore


@dataclass(frozen=True, slots=True)
class Disabled:
    """What disabling a reviewer took back."""

    tokens: int
    sessions: int
    released: int  # tasks they held, back in the queue


class AuthService(Service):
    def __init__(
        self,
        store: ReviewStore,
        *,
        hashes: auth.HashPool,
        token_ttl_s: int,
        denied_audit_per_s: float = 10.0,
        clock: Callable[[], datetime] = utcnow,
        queued: asyncio.Event | None = None,
    ) -> None:
        super().__init__(store, clock=clock, queued=queued)
        self.hashes = hashes
        self._token_ttl = timedelta(seconds=token_ttl_s)
        # Refusals a stranger can cause at will (no or a made-up token, no session) are
        # audited at a bounded rate; the rest are counted into the next row written.
        self.refusals = DeniedAudit(store.audit.write, denied_audit_per_s)

    # --- logging in --------------------------------------------------------------------------
    async def login(self, reviewer_id: str, password: str) -> Reviewer:
        found = await self.store.reviewers.with_password(reviewer_id)
        # Off the event loop; an unknown id costs the same hash work as a wrong password.
        if not await self.hashes.verify(password, found[1] if found else None) or found is None:
            await self.store.audit.write(
                actor=None, action="login", outcome="denied", detail={"reviewer": reviewer_id}
            )
            raise Unauthenticated("unknown reviewer or wrong password")
        await self.store.audit.write(actor=reviewer_id, action="login")
        return found[0]

    async def issue_token(self, reviewer: Reviewer) -> tuple[str, datetime]:
        token = auth.new_token()
        expires = self.now() + self._token_ttl
        await self.store.credentials.store_token(reviewer.id, auth.token_hash(token), expires)
        return token, expires

    async def from_token(self, token: str | None, *, path: str) -> Reviewer:
        if not token:
            await self.refusals.record("api", {"path": path, "why": "none"})
            review_metrics.denied.add(1, {"reason": "no_token"})
            raise Unauthenticated("missing bearer token")
        reviewer = await self.store.credentials.token_owner(auth.token_hash(token), self.now())
        if reviewer is None:
            await self.refusals.record("api", {"path": path, "why": "invalid or expired token"})
            review_metrics.denied.add(1, {"reason": "bad_token"})
            raise Unauthenticated("invalid or expired token")
        return reviewer

    async def open_session(self, reviewer: Reviewer, session: auth.Session) -> None:
        """Record a console session issued at login (logout and revocation delete it)."""
        expires = datetime.fromtimestamp(session.expires, tz=UTC)
        await self.store.credentials.store_session(
            reviewer.id, auth.token_hash(session.sid), expires
        )

    async def from_session(self, session: auth.Session | None) -> Reviewer | None:
        """The reviewer of a signed session cookie while its session is open on the server."""
        if session is None:
            return None
        return await self.store.credentials.session_owner(
            auth.token_hash(session.sid), session.reviewer, self.now()
        )

    async def logout(self, reviewer: Reviewer, session: auth.Session) -> None:
        await self.store.credentials.end_session(auth.token_hash(session.sid), reviewer.id)

    # --- credential lifecycle (the `guardstream review` admin commands) ----------------------
    async def put_reviewer(
        self, reviewer: Reviewer, password_hash: str, *, actor: str | None
    ) -> tuple[int, int]:
        """Create or update a reviewer with a new password (`review.auth.hash_password`); an
        existing reviewer's tokens and sessions are revoked: (tokens, sessions)."""
        return await self.store.reviewers.put(reviewer, password_hash, actor=actor)

    async def revoke_token(self, token: str, *, actor: str | None) -> str | None:
        """Delete one API token; the reviewer it belonged to, or None when it is unknown."""
        return await self.store.credentials.revoke_token(auth.token_hash(token), actor=actor)

    async def revoke_all(self, reviewer_id: str, *, actor: str | None) -> tuple[int, int] | None:
        """Delete every token and session of a reviewer: (tokens, sessions), None if unknown."""
        async with self.store.transaction() as tx:
            if not await tx.reviewers.exists(reviewer_id):
                return None
            revoked = await tx.credentials.revoke_all(reviewer_id)
            await tx.audit.write(
                actor=actor,
                action="reviewer.revoke",
                detail={"reviewer": reviewer_id, "tokens": revoked[0], "sessions": revoked[1]},
            )
        return revoked

    async def disable_reviewer(self, reviewer_id: str, *, actor: str | None) -> Disabled | None:
        """Disable a reviewer at once: no login, every token and session deleted, the tasks
        they hold back in the queue (with their `released` events), one transaction.
        None when there is no such reviewer."""
        now = self.now()
        async with self.store.transaction() as tx:
            if not await tx.reviewers.set_disabled(reviewer_id, now):
                return None
            tokens, sessions = await tx.credentials.revoke_all(reviewer_id)
            held = await tx.claims.held_tasks(reviewer_id)
            for task in held:
                await tx.claims.unassign(task.task_id)
                await publish(tx, assignment(task, AssignmentEvent.RELEASED, None, now))
            await tx.audit.write(
                actor=actor,
                action="reviewer.disable",
                detail={
                    "reviewer": reviewer_id,
                    "tokens": tokens,
                    "sessions": sessions,
                    "released": [t.task_id for t in held],
                },
            )
        if held:
            self.queued.set()
        return Disabled(tokens, sessions, len(held))

    async def enable_reviewer(self, reviewer_id: str, *, actor: str | None) -> bool:
        """Let a disabled reviewer log in again (their old credentials stay revoked)."""
        async with self.store.transaction() as tx:
            if not await tx.reviewers.set_disabled(reviewer_id, None):
                return False
            await tx.audit.write(
                actor=actor, action="reviewer.enable", detail={"reviewer": reviewer_id}
            )
        return True

    async def purge_expired(self) -> tuple[int, int]:
        """Delete expired tokens and sessions: (tokens, sessions)."""
        return await self.store.credentials.purge(self.now())
