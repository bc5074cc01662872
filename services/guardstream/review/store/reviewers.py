"""Reviewers and their credentials.

A reviewer: pseudonymous id, tenants, role, on call, password hash, disabled or not, and the
row lock that makes one reviewer's claims take turns. Credentials they can be given and have
taken back: API tokens and console sessions, each stored as the hash of its secret with an
expiry, and read on every request (a revocation holds from the next request on, on every
replica).
"""

from __future__ import annotations

from datetime import datetime

import asyncpg

from guardstream.review.logic import Reviewer, Role
from guardstream.review.store.audit import AuditRows
from guardstream.review.store.db import Rows, affected

_IDLE_ON_CALL = (
    "SELECT r.id, r.tenants, r.role, r.on_call FROM reviewers r"
    " WHERE r.on_call AND r.disabled_at IS NULL AND r.role IN ('reviewer', 'senior')"
    " AND NOT EXISTS (SELECT 1 FROM tasks h WHERE h.assignee = r.id"
    " AND h.state = 'assigned' AND h.lock_expires_at > $1)"
    " ORDER BY r.last_assigned_at NULLS FIRST, r.id"
)


_REVIEWER = "SELECT r.id, r.tenants, r.role, r.on_call FROM "


def reviewer_of(row: asyncpg.Record) -> Reviewer:
    return Reviewer(row["id"], tuple(row["tenants"]), Role(row["role"]), row["on_call"])


class ReviewerRows(Rows):
    __slots__ = ()

    async def put(
        self, reviewer: Reviewer, password_hash: str, *, actor: str | None
    ) -> tuple[int, int]:
        """Create or update a reviewer with a new password. An existing reviewer's tokens and
        console sessions are deleted with it (a reset password takes back what the old one
        gave), audited together; returns how many (tokens, sessions) were revoked."""
        async with self.atomic() as conn:
            await conn.execute(
                "INSERT INTO reviewers (id, tenants, role, on_call, password_hash)"
                " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO UPDATE SET"
                " tenants = EXCLUDED.tenants, role = EXCLUDED.role, on_call = EXCLUDED.on_call,"
                " password_hash = EXCLUDED.password_hash",
                reviewer.id,
                list(reviewer.tenants),
                reviewer.role.value,
                reviewer.on_call,
                password_hash,
            )
            revoked = await CredentialRows(conn).revoke_all(reviewer.id)
            await AuditRows(conn).write(
                actor=actor,
                action="reviewer.put",
                detail={
                    "reviewer": reviewer.id,
                    "role": reviewer.role.value,
                    "tenants": list(reviewer.tenants),
                    "on_call": reviewer.on_call,
                    "revoked_tokens": revoked[0],
                    "revoked_sessions": revoked[1],
                },
            )
        return revoked

    async def with_password(self, reviewer_id: str) -> tuple[Reviewer, str] | None:
        """The reviewer and their password hash; None when unknown or disabled."""
        row = await self.db.fetchrow(
            "SELECT id, tenants, role, on_call, password_hash FROM reviewers"
            " WHERE id = $1 AND disabled_at IS NULL",
            reviewer_id,
        )
        return (reviewer_of(row), row["password_hash"]) if row else None

    async def exists(self, reviewer_id: str) -> bool:
        return bool(await self.db.fetchval("SELECT 1 FROM reviewers WHERE id = $1", reviewer_id))

    async def set_disabled(self, reviewer_id: str, disabled_at: datetime | None) -> bool:
        """Disable (a time) or enable (None) a reviewer; False when there is no such reviewer."""
        status = await self.db.execute(
            "UPDATE reviewers SET disabled_at = $2 WHERE id = $1", reviewer_id, disabled_at
        )
        return bool(status == "UPDATE 1")

    async def lock(self, reviewer_id: str) -> bool:
        """Lock the reviewer's row for this transaction (their claims take turns); False when
        the reviewer does not exist or is disabled."""
        row = await self.db.fetchrow(
            "SELECT 1 FROM reviewers WHERE id = $1 AND disabled_at IS NULL FOR UPDATE",
            reviewer_id,
        )
        return row is not None

    async def idle_on_call(self, now: datetime) -> list[Reviewer]:
        """On-call reviewers (not admins) holding no live claim, assigned longest ago first."""
        rows = await self.db.fetch(_IDLE_ON_CALL, now)
        return [reviewer_of(r) for r in rows]

    async def lock_idle(self, reviewer_id: str, now: datetime) -> bool:
        """Lock the reviewer's row for this transaction if they are still idle and on call."""
        row = await self.db.fetchrow(
            _IDLE_ON_CALL.replace("ORDER BY", "AND r.id = $2 ORDER BY") + " FOR UPDATE SKIP LOCKED",
            now,
            reviewer_id,
        )
        return row is not None


class CredentialRows(Rows):
    __slots__ = ()

    async def store_token(self, reviewer_id: str, digest: str, expires: datetime) -> None:
        """Store a token's hash, audited; the reviewer's expired tokens go with it."""
        async with self.atomic() as conn:
            await conn.execute(
                "DELETE FROM api_tokens WHERE reviewer_id = $1 AND expires_at <= now()",
                reviewer_id,
            )
            await conn.execute(
                "INSERT INTO api_tokens (token_hash, reviewer_id, expires_at) VALUES ($1, $2, $3)",
                digest,
                reviewer_id,
                expires,
            )
            await AuditRows(conn).write(actor=reviewer_id, action="token.issue")

    async def token_owner(self, digest: str, now: datetime) -> Reviewer | None:
        """The reviewer a token hash belongs to, while the token is unexpired and the
        reviewer enabled."""
        row = await self.db.fetchrow(
            _REVIEWER + "api_tokens t JOIN reviewers r ON r.id = t.reviewer_id"
            " WHERE t.token_hash = $1 AND t.expires_at > $2 AND r.disabled_at IS NULL",
            digest,
            now,
        )
        return reviewer_of(row) if row else None

    async def revoke_token(self, digest: str, *, actor: str | None) -> str | None:
        """Delete one token, audited; the reviewer it belonged to, or None when there was none."""
        async with self.atomic() as conn:
            owner = await conn.fetchval(
                "DELETE FROM api_tokens WHERE token_hash = $1 RETURNING reviewer_id", digest
            )
            if owner is not None:
                await AuditRows(conn).write(
                    actor=actor, action="token.revoke", detail={"reviewer": owner}
                )
        return str(owner) if owner is not None else None

    async def store_session(self, reviewer_id: str, digest: str, expires: datetime) -> None:
        """Open a console session (its id's hash), audited; the reviewer's expired sessions go
        with it."""
        async with self.atomic() as conn:
            await conn.execute(
                "DELETE FROM console_sessions WHERE reviewer_id = $1 AND expires_at <= now()",
                reviewer_id,
            )
            await conn.execute(
                "INSERT INTO console_sessions (session_hash, reviewer_id, expires_at)"
                " VALUES ($1, $2, $3)",
                digest,
                reviewer_id,
                expires,
            )
            await AuditRows(conn).write(actor=reviewer_id, action="session.open")

    async def session_owner(self, digest: str, reviewer_id: str, now: datetime) -> Reviewer | None:
        """The reviewer of a live console session (not logged out, not expired, enabled)."""
        row = await self.db.fetchrow(
            _REVIEWER + "console_sessions s JOIN reviewers r ON r.id = s.reviewer_id"
            " WHERE s.session_hash = $1 AND s.reviewer_id = $2 AND s.expires_at > $3"
            " AND r.disabled_at IS NULL",
            digest,
            reviewer_id,
            now,
        )
        return reviewer_of(row) if row else None

    async def end_session(self, digest: str, reviewer_id: str) -> None:
        """Log out: the session row goes, audited."""
        async with self.atomic() as conn:
            await conn.execute(
                "DELETE FROM console_sessions WHERE session_hash = $1 AND reviewer_id = $2",
                digest,
                reviewer_id,
            )
            await AuditRows(conn).write(actor=reviewer_id, action="logout")

    async def revoke_all(self, reviewer_id: str) -> tuple[int, int]:
        """Delete every token and console session of the reviewer: (tokens, sessions)."""
        tokens = await self.db.execute("DELETE FROM api_tokens WHERE reviewer_id = $1", reviewer_id)
        sessions = await self.db.execute(
            "DELETE FROM console_sessions WHERE reviewer_id = $1", reviewer_id
        )
        return affected(tokens), affected(sessions)

    async def purge(self, now: datetime) -> tuple[int, int]:
        """Delete expired tokens and sessions: (tokens, sessions)."""
        async with self.atomic() as conn:
            tokens = await conn.execute("DELETE FROM api_tokens WHERE expires_at <= $1", now)
            sessions = await conn.execute(
                "DELETE FROM console_sessions WHERE expires_at <= $1", now
            )
        return affected(tokens), affected(sessions)
