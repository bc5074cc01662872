"""Erasure in the review database: what one tenant's posts left in it, found and deleted in
one transaction (`guardstream erase`, `verdict.erasure`).

A post's rows: its text, its author index row, its tasks with their reviews, QA items and SLA
marks, the outbox rows naming it (events and feedback samples by the post, human verdicts by
its content key), the casebook entries built from it, and the moderation API's webhook rows
when that API shares the schema. Audit
rows stay: they hold no post text and record who did what (they go with the audit retention);
the reviewer's free-text reason in a decision's audit row is removed with the post.
"""

from __future__ import annotations

from collections.abc import Sequence

from guardstream.review.store.db import Conn, Rows, affected

# (table, the WHERE clause over {tenant}, {posts}, {tasks} and {human} - the human verdict
# keys), in the order they are deleted (children before the tasks they reference).
_OWN_ROWS: tuple[tuple[str, str], ...] = (
    ("reviews", "task_id = ANY({tasks}::text[])"),
    ("qa_items", "task_id = ANY({tasks}::text[])"),
    (
        "sla_marks",
        "decision_id IN (SELECT decision_id FROM tasks WHERE task_id = ANY({tasks}::text[]))",
    ),
    ("tasks", "task_id = ANY({tasks}::text[])"),
    ("post_texts", "tenant = {tenant} AND post_id = ANY({posts}::text[])"),
    ("post_authors", "tenant = {tenant} AND post_id = ANY({posts}::text[])"),
    # A casebook entry shows its source posts' text and reasons: it goes with any of them.
    ("casebook", "tenant = {tenant} AND post_ids && {posts}::text[]"),
    (
        "outbox",
        "(kind IN ('event', 'feedback_sample')"
        " AND convert_from(payload, 'UTF8')::jsonb ->> 'tenant' = {tenant}"
        " AND convert_from(payload, 'UTF8')::jsonb ->> 'post_id' = ANY({posts}::text[]))"
        " OR (kind = 'human_verdict' AND key = ANY({human}::text[]))",
    ),
)
# The moderation API's tables, erased where they exist in this schema.
_API_ROWS: tuple[tuple[str, str], ...] = (
    ("webhook_watch", "tenant = {tenant} AND post_id = ANY({posts}::text[])"),
    ("webhook_deliveries", "tenant = {tenant} AND post_id = ANY({posts}::text[])"),
)


def _bind(where: str, values: dict[str, object]) -> tuple[str, list[object]]:
    """`where` with its named values as $1..$n in order of first use (asyncpg wants exactly
    the parameters a statement uses)."""
    used = [name for name in values if "{" + name + "}" in where]
    numbered = {name: f"${i}" for i, name in enumerate(used, start=1)}
    return where.format(**numbered), [values[name] for name in used]


class ErasureRows(Rows):
    __slots__ = ()

    async def posts_of_author(self, tenant: str, author_key: str) -> set[str]:
        rows = await self.db.fetch(
            "SELECT post_id FROM post_authors WHERE tenant = $1 AND author_key = $2",
            tenant,
            author_key,
        )
        return {r["post_id"] for r in rows}

    async def content_keys(self, tenant: str, post_ids: Sequence[str]) -> set[str]:
        rows = await self.db.fetch(
            "SELECT DISTINCT content_key FROM tasks WHERE tenant = $1 AND post_id = ANY($2)",
            tenant,
            list(post_ids),
        )
        return {r["content_key"] for r in rows}

    async def erase(
        self,
        tenant: str,
        post_ids: Sequence[str],
        human_verdict_keys: Sequence[str],
        *,
        dry_run: bool,
    ) -> dict[str, int]:
        """Rows per table of the posts (deleted unless `dry_run`); one transaction."""
        async with self.atomic() as conn:
            tasks = [
                r["task_id"]
                for r in await conn.fetch(
                    "SELECT task_id FROM tasks WHERE tenant = $1 AND post_id = ANY($2::text[])"
                    " FOR UPDATE",
                    tenant,
                    list(post_ids),
                )
            ]
            values: dict[str, object] = {
                "tenant": tenant,
                "posts": list(post_ids),
                "tasks": tasks,
                "human": list(human_verdict_keys),
            }
            counts: dict[str, int] = {}
            # Audit rows stay, but a reviewer's free-text reason about the post goes.
            scrub = "task_id = ANY($1::text[]) AND detail ? 'reason'"
            if dry_run:
                counts["audit_reasons"] = int(
                    await conn.fetchval(f"SELECT count(*) FROM audit WHERE {scrub}", tasks)  # noqa: S608
                )
            else:
                counts["audit_reasons"] = affected(
                    await conn.execute(
                        f"UPDATE audit SET detail = detail - 'reason' WHERE {scrub}",  # noqa: S608
                        tasks,
                    )
                )
            for table, clause in _OWN_ROWS + await _present(conn, _API_ROWS):
                where, args = _bind(clause, values)
                # Table names and clauses are the constants above, never input.
                if dry_run:
                    query = f"SELECT count(*) FROM {table} WHERE {where}"  # noqa: S608
                    counts[table] = int(await conn.fetchval(query, *args))
                else:
                    query = f"DELETE FROM {table} WHERE {where}"  # noqa: S608
                    counts[table] = affected(await conn.execute(query, *args))
            return counts


async def _present(conn: Conn, tables: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    found = []
    for table, where in tables:
        if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table):
            found.append((table, where))
    return tuple(found)
