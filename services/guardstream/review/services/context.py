"""Context beside a task: earlier decisions of its tenant on the same, nearly the same and
similar content, and its author's decided posts (`review/context.py` says what each is).

Vectors live in PostgreSQL (`task_vectors`, little-endian float16), written by `index` (the
review process's background loop, and at once for a task read before the loop reached it).
Semantic search runs in-process: each replica keeps, per tenant, a matrix of that tenant's
vectors, read incrementally by sequence number on every search and searched by brute force
(one matrix-vector product over float32 rows: 20-100 ms per 100k vectors on a loaded
2-core machine). The database stays the truth: hits are
read back from it as decided tasks of the same tenant, so an erased or undecided task a
stale matrix still holds is never shown. pgvector would move the search into PostgreSQL, but
no Debian package of it exists for the PostgreSQL 15 here; the docs say more.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import datetime

import numpy as np

from guardstream.contracts.events import utcnow
from guardstream.review.context import (
    AUTHOR_MAX,
    SIMILAR_MAX,
    DecidedItem,
    ReviewContext,
    author_history,
    conflict,
    merged,
    text_features,
)
from guardstream.review.logic import Permission, Reviewer
from guardstream.review.services.common import Service
from guardstream.review.services.queue import TaskView
from guardstream.review.store import ReviewStore
from guardstream.review.store.context import TaskVector, Unindexed
from guardstream.verdict.embeddings import (
    SentenceEmbedder,
    Vectors,
    from_bytes,
    nearest,
    to_bytes,
)

INDEX_BATCH = 64  # texts embedded per background round (~1.5 s of one core for short posts)
# Between rounds that found less than a batch: each embedding call costs 0.1-0.2 s of CPU
# however few texts it gets (the model's weights are streamed once per call), so rounds are
# spaced to batch what arrives rather than to embed each task the moment it is created.
INDEX_INTERVAL_S = 2.0
# Newest vectors kept per tenant in a replica's matrix (2 KiB each as float32: 100 MiB). Older
# decisions are still found as exact and near duplicates (SQL), not semantically.
MAX_VECTORS = 50_000
_CANDIDATES = 48  # semantic hits read back from the database (undecided ones drop out)
_READ_CHUNK = 5_000


class TenantVectors:
    """One tenant's vectors in memory, in stored order: rows of `matrix` are `task_ids`."""

    def __init__(self, dim: int, cap: int = MAX_VECTORS) -> None:
        self.dim = dim
        self.cap = cap
        self.seq = 0  # the last sequence number read
        self.task_ids: list[str] = []
        self._rows = np.zeros((0, dim), dtype=np.float32)
        self._size = 0
        self.lock = asyncio.Lock()

    @property
    def matrix(self) -> Vectors:
        return self._rows[: self._size]

    def add(self, rows: Sequence[tuple[int, str, bytes]]) -> None:
        fresh: list[Vectors] = []
        for seq, task_id, raw in rows:
            self.seq = max(self.seq, seq)
            try:
                vector = from_bytes(raw, self.dim)
            except ValueError:
                continue  # not this model's size: never compared
            fresh.append(vector)
            self.task_ids.append(task_id)
        if not fresh:
            return
        need = self._size + len(fresh)
        if need > len(self._rows):
            grown = np.zeros((max(need, 2 * len(self._rows), 1024), self.dim), dtype=np.float32)
            grown[: self._size] = self._rows[: self._size]
            self._rows = grown
        self._rows[self._size : need] = np.stack(fresh)
        self._size = need
        if self._size > self.cap:  # the oldest leave first
            drop = self._size - self.cap
            self._rows = self._rows[drop : self._size].copy()
            self.task_ids = self.task_ids[drop:]
            self._size = self.cap


class ContextService(Service):
    def __init__(
        self,
        store: ReviewStore,
        embedder: Callable[[], SentenceEmbedder],
        *,
        clock: Callable[[], datetime] = utcnow,
        max_vectors: int = MAX_VECTORS,
    ) -> None:
        super().__init__(store, clock=clock)
        # A factory: the model loads on first use, in a worker thread, not at start-up.
        self._embedder_factory = embedder
        self._embedder: SentenceEmbedder | None = None
        self._max_vectors = max_vectors
        self._tenants: dict[str, TenantVectors] = {}

    def _model(self) -> SentenceEmbedder:
        if self._embedder is None:
            self._embedder = self._embedder_factory()
        return self._embedder

    async def index(self, limit: int = INDEX_BATCH, task_id: str | None = None) -> int:
        """Fingerprint and embed up to `limit` tasks whose text has arrived and that have no
        vector yet (`task_id`: that one); returns how many were stored."""
        todo = await self.store.context.unindexed(limit, task_id)
        if not todo:
            return 0
        vectors = await asyncio.to_thread(self._vectors, todo)
        return await self.store.context.save(vectors)

    def _vectors(self, todo: Sequence[Unindexed]) -> list[TaskVector]:
        model = self._model()
        texts = [t.text for t in todo]
        embedded = model.embed(texts)
        out: list[TaskVector] = []
        for row, text, vector in zip(todo, texts, embedded, strict=True):
            features = text_features(text)
            out.append(
                TaskVector(
                    task_id=row.task_id,
                    tenant=row.tenant,
                    fingerprint=features.fingerprint,
                    digits=features.digits,
                    model=model.model,
                    vector=to_bytes(vector),
                )
            )
        return out

    async def _tenant_vectors(self, tenant: str) -> TenantVectors:
        model = self._model()
        vectors = self._tenants.get(tenant)
        if vectors is None:
            vectors = self._tenants.setdefault(
                tenant, TenantVectors(model.dim, cap=self._max_vectors)
            )
        async with vectors.lock:
            while True:
                rows = await self.store.context.since(tenant, model.model, vectors.seq, _READ_CHUNK)
                vectors.add(rows)
                if len(rows) < _READ_CHUNK:
                    return vectors

    async def for_view(self, reviewer: Reviewer, view: TaskView) -> ReviewContext | None:
        """The context of a task the reviewer has just been shown (`QueueService.view`, which
        checked the tenant and audited the read); None for a task shown blind (an open QA
        item: earlier labels of the same content would give its first label away)."""
        self._require(reviewer, Permission.READ_QUEUE)
        task = view.task
        if view.blind:
            return None
        texts = reviewer.may(Permission.READ_TEXT)
        tenant = task.tenant
        ctx = self.store.context
        if view.text is not None and await ctx.vector(task.task_id, tenant) is None:
            await self.index(1, task.task_id)
        own = await ctx.vector(task.task_id, tenant)
        exact = await ctx.exact(tenant, task.content_key, task.task_id, SIMILAR_MAX, texts=texts)
        near: list[DecidedItem] = []
        semantic: list[tuple[DecidedItem, float]] = []
        if own is not None:
            if own.fingerprint is not None:
                near = await ctx.near(
                    tenant, own.fingerprint, own.digits, task.task_id, SIMILAR_MAX, texts=texts
                )
            semantic = await self._semantic(tenant, own, task.task_id, texts=texts)
        similar = merged(exact, near, semantic, exclude=task.task_id)
        author = None
        ref = await ctx.author_of(tenant, task.post_id)
        if ref is not None:
            items, counts = await ctx.by_author(tenant, ref, task.task_id, AUTHOR_MAX, texts=texts)
            author = author_history(items, counts.by_verdict, counts.corrected)
        await self.store.audit.write(
            actor=reviewer.id,
            action="task.context",
            tenant=tenant,
            task_id=task.task_id,
            detail={
                "similar": [n.item.task_id for n in similar],
                "author": [i.task_id for i in author.items] if author else [],
                "texts": texts,
            },
        )
        return ReviewContext(similar, conflict(similar), author, own is not None)

    async def _semantic(
        self, tenant: str, own: TaskVector, exclude: str, *, texts: bool
    ) -> list[tuple[DecidedItem, float]]:
        vectors = await self._tenant_vectors(tenant)
        try:
            query = from_bytes(own.vector, vectors.dim)
        except ValueError:
            return []
        hits = [
            (vectors.task_ids[i], score)
            for i, score in nearest(vectors.matrix, query, _CANDIDATES)
            if vectors.task_ids[i] != exclude
        ]
        found = await self.store.context.decided(tenant, [t for t, _ in hits], texts=texts)
        return [(found[t], score) for t, score in hits if t in found]
