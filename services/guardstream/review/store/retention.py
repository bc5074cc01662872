"""Retention in the review database (`guardstream maintenance`): each purge deletes by age, in
batches (no long lock on a busy table), and is idempotent; `oldest` says how old the oldest row
each purge keeps is (the `guardstream.retention.oldest_age` gauge).

- `final_posts`: tasks decided before the cut-off, with their reviews, QA items and SLA
  marks, and the post texts no other task needs;
- `relayed_outbox`: outbox rows sent before the cut-off (a human verdict's row only once its
  verdict expired: the console restores a flushed cache from it);
- `audit`: audit rows older than the cut-off;
- `author_index`: author index rows older than the cut-off (the archive's retention).
"""

from __future__ import annotations

from datetime import datetime

from guardstream.review.store.db import Rows, affected

BATCH = 5000


class RetentionRows(Rows):
    __slots__ = ()

    async def final_posts(self, before: datetime) -> int:
        """Tasks decided before `before` (and what hangs on them); how many tasks."""
        total = 0
        while True:
            async with self.atomic() as conn:
                rows = await conn.fetch(
                    "SELECT task_id, tenant, post_id, decision_id FROM tasks"
                    " WHERE state = 'decided' AND decided_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED",
                    before,
                    BATCH,
                )
                if not rows:
                    return total
                tasks = [r["task_id"] for r in rows]
                await conn.execute("DELETE FROM reviews WHERE task_id = ANY($1::text[])", tasks)
                await conn.execute("DELETE FROM qa_items WHERE task_id = ANY($1::text[])", tasks)
                await conn.execute(
                    "DELETE FROM sla_marks WHERE decision_id = ANY($1::text[])",
                    [r["decision_id"] for r in rows],
                )
                total += affected(
                    await conn.execute("DELETE FROM tasks WHERE task_id = ANY($1::text[])", tasks)
                )
                await conn.execute(
                    "DELETE FROM post_texts p USING unnest($1::text[], $2::text[]) AS k(t, i)"
                    " WHERE p.tenant = k.t AND p.post_id = k.i AND NOT EXISTS (SELECT 1 FROM"
                    " tasks x WHERE x.tenant = p.tenant AND x.post_id = p.post_id)",
                    [r["tenant"] for r in rows],
                    [r["post_id"] for r in rows],
                )

    async def relayed_outbox(self, before: datetime, human_before: datetime) -> int:
        return await self._batched(
            "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE sent_at IS NOT NULL"
            " AND sent_at < $1 AND (kind <> 'human_verdict' OR created_at < $2) LIMIT $3)",
            before,
            human_before,
        )

    async def audit(self, before: datetime) -> int:
        return await self._batched(
            "DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE at < $1 LIMIT $2)", before
        )

    async def author_index(self, before: datetime) -> int:
        return await self._batched(
            "DELETE FROM post_authors WHERE ctid IN (SELECT ctid FROM post_authors"
            " WHERE received_at < $1 LIMIT $2)",
            before,
        )

    async def _batched(self, statement: str, *args: object) -> int:
        total = 0
        while True:
            done = affected(await self.db.execute(statement, *args, BATCH))
            total += done
            if done < BATCH:
                return total

    async def oldest(self) -> dict[str, datetime | None]:
        """The time of the oldest row each purge keeps, by store name."""
        row = await self.db.fetchrow(
            "SELECT (SELECT min(received_at) FROM post_texts) AS post_texts,"
            " (SELECT min(decided_at) FROM tasks WHERE state = 'decided') AS decided_tasks,"
            " (SELECT min(sent_at) FROM outbox WHERE sent_at IS NOT NULL) AS outbox,"
            " (SELECT min(at) FROM audit) AS audit,"
            " (SELECT min(received_at) FROM post_authors) AS author_index,"
            " (SELECT min(least(t.expires_at, t.created_at)) FROM api_tokens t) AS tokens"
        )
        return dict(row) if row is not None else {}
