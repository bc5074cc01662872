"""Post texts: what reviewers read, kept apart from the tasks (a post's text and its task
arrive on different topics, in either order) and purged once no task needs them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from guardstream.review.store.db import Conn, Rows, affected


@dataclass(frozen=True, slots=True)
class PostText:
    post_id: str
    tenant: str
    kind: str
    text: str
    prompt: str | None
    lang: str | None = None
    region: str | None = None
    # `verdict.erasure.author_key`: the author's posts, for erasure and the reviewer's context
    author_key: str | None = None


_POST_LOCK = 0x6773_7270  # advisory lock class: one post's text and task are written in turn


async def lock_posts(conn: Conn, posts: Iterable[tuple[str, str]]) -> None:
    """Serialise writers of the same posts, each a (tenant, post_id) (text and task may arrive
    in concurrent batches or on different replicas): whoever commits second sees the other's
    row. Sorted: no deadlock."""
    # Neither a tenant nor a post_id holds a control character: the pair joins unambiguously.
    await conn.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext(x))"
        " FROM (SELECT DISTINCT x FROM unnest($2::text[]) AS x ORDER BY x) AS s",
        _POST_LOCK,
        sorted({f"{tenant}\x1f{post_id}" for tenant, post_id in posts}),
    )


class PostRows(Rows):
    __slots__ = ()

    async def save(self, posts: Sequence[PostText]) -> None:
        """Keep the texts not kept yet; tasks created before their post arrived learn its
        language and region now."""
        if not posts:
            return
        async with self.atomic() as conn:
            await lock_posts(conn, [(p.tenant, p.post_id) for p in posts])
            await conn.executemany(
                "INSERT INTO post_texts (post_id, tenant, kind, text, prompt, lang, region)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (tenant, post_id) DO NOTHING",
                [(p.post_id, p.tenant, p.kind, p.text, p.prompt, p.lang, p.region) for p in posts],
            )
            authored = [(p.post_id, p.tenant, p.author_key) for p in posts if p.author_key]
            if authored:
                await conn.executemany(
                    "INSERT INTO post_authors (post_id, tenant, author_key) VALUES ($1, $2, $3)"
                    " ON CONFLICT (post_id, tenant) DO NOTHING",
                    authored,
                )
            await conn.execute(
                "UPDATE tasks t SET lang = COALESCE(t.lang, p.lang),"
                " region = COALESCE(t.region, p.region) FROM post_texts p"
                " WHERE p.post_id = t.post_id AND p.tenant = t.tenant"
                " AND p.post_id = ANY($1::text[]) AND (t.lang IS NULL OR t.region IS NULL)",
                [p.post_id for p in posts],
            )

    async def get(self, post_id: str, tenant: str) -> PostText | None:
        row = await self.db.fetchrow(
            "SELECT post_id, tenant, kind, text, prompt, lang, region FROM post_texts"
            " WHERE post_id = $1 AND tenant = $2",
            post_id,
            tenant,
        )
        return PostText(**dict(row)) if row else None

    async def heads(
        self, posts: Sequence[tuple[str, str]], chars: int
    ) -> dict[tuple[str, str], str]:
        """The first `chars` characters of each kept text, by (tenant, post_id): the queue's
        previews (a post whose text has not arrived has none)."""
        if not posts:
            return {}
        rows = await self.db.fetch(
            "SELECT p.tenant, p.post_id, left(p.text, $3) AS head FROM post_texts p"
            " JOIN unnest($1::text[], $2::text[]) AS k(tenant, post_id)"
            " ON p.tenant = k.tenant AND p.post_id = k.post_id",
            [t for t, _ in posts],
            [p for _, p in posts],
            chars,
        )
        return {(r["tenant"], r["post_id"]): r["head"] for r in rows}

    async def purge(self, before: datetime) -> int:
        """Delete texts received before `before` that no task refers to; how many."""
        status = await self.db.execute(
            "DELETE FROM post_texts p WHERE received_at < $1"
            " AND NOT EXISTS (SELECT 1 FROM tasks t"
            " WHERE t.tenant = p.tenant AND t.post_id = p.post_id)",
            before,
        )
        return affected(status)
