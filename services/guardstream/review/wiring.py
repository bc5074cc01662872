"""The one way to build the review services: every entry point (the review process, the
`guardstream review` admin commands, `guardstream feedback qa-sample`) opens them here.

`review_services(settings)` opens the store (migrating it), builds each service from the
settings, and closes the store and the password-hashing threads on exit. The services share
one `queued` event, set after a commit that queued outbox items: the review process's relay
waits on it (elsewhere nobody does, and the items wait for the next relay round).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from guardstream.policy import PolicyRegistry, load_registry
from guardstream.review.auth import HashPool
from guardstream.review.logic import parse_tags
from guardstream.review.services.auth import AuthService
from guardstream.review.services.casebook import CasebookService
from guardstream.review.services.context import ContextService
from guardstream.review.services.qa import QaService
from guardstream.review.services.queue import QueueService
from guardstream.review.services.tasks import TaskService
from guardstream.review.store import ReviewStore
from guardstream.runtime.settings import Settings
from guardstream.verdict.embeddings import shared_embedder


@dataclass(frozen=True, slots=True)
class ReviewServices:
    store: ReviewStore
    auth: AuthService
    queue: QueueService
    tasks: TaskService
    qa: QaService
    context: ContextService  # similar earlier decisions, the author's decided posts
    casebook: CasebookService  # the 争议案例手册: entries, curation, refreshes
    queued: asyncio.Event  # set after a commit that queued outbox items


@asynccontextmanager
async def review_services(
    settings: Settings, *, policies: PolicyRegistry | None = None
) -> AsyncIterator[ReviewServices]:
    """The review services over this deployment's store (`policies`: loaded from
    `settings.policy.dir` unless given)."""
    registry = policies if policies is not None else load_registry(settings.policy.dir)
    store = await ReviewStore.open(settings)
    hashes = HashPool(settings.review.edge.hash_workers, settings.review.edge.hash_queue)
    queued = asyncio.Event()
    tags = parse_tags(settings.review.tags)
    queue = QueueService(store)
    try:
        yield ReviewServices(
            store=store,
            auth=AuthService(
                store,
                hashes=hashes,
                token_ttl_s=settings.review.token_ttl_s,
                denied_audit_per_s=settings.review.edge.denied_audit_per_s,
                queued=queued,
            ),
            queue=queue,
            tasks=TaskService(
                store,
                registry,
                tags=tags,
                lock_s=settings.review.lock_s,
                max_claims=settings.review.max_claims,
                stats=queue.figures,
                queued=queued,
            ),
            qa=QaService(
                store,
                registry,
                tags=tags,
                cadence=settings.qa.cadence,
                sample_size=settings.qa.sample_size,
                min_agreement=settings.qa.agreement_min,
                queued=queued,
            ),
            context=ContextService(store, shared_embedder),
            casebook=CasebookService(store, queued=queued),
            queued=queued,
        )
    finally:
        hashes.close()
        await store.close()
