"""TEMPORARY, for `services/guardstream/cli/` only (the lead switches it to `review.wiring`,
then this module goes): the old `ReviewService` constructor and the methods the CLI still
calls, over the review services. Nothing else may import it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from guardstream.policy import PolicyRegistry
from guardstream.review.auth import HashPool
from guardstream.review.logic import Reviewer
from guardstream.review.qa_period import Cadence, QaPeriod
from guardstream.review.services.auth import AuthService, Disabled
from guardstream.review.services.qa import QaSampled, QaService
from guardstream.review.store import ReviewStore

__all__ = ["QaSampled", "ReviewService"]


class ReviewService:
    def __init__(
        self,
        store: ReviewStore,
        policies: PolicyRegistry,
        *,
        tags: Sequence[str],
        lock_s: int,
        token_ttl_s: int,
        qa_cadence: Cadence = "monthly",
        qa_sample_size: int = 100,
        qa_min_agreement: float = 0.9,
    ) -> None:
        del lock_s  # claims are not the CLI's
        self._auth = AuthService(store, hashes=HashPool(1, 4), token_ttl_s=token_ttl_s)
        self._qa = QaService(
            store,
            policies,
            tags=tags,
            cadence=qa_cadence,
            sample_size=qa_sample_size,
            min_agreement=qa_min_agreement,
        )

    async def issue_token(self, reviewer: Reviewer) -> tuple[str, datetime]:
        return await self._auth.issue_token(reviewer)

    async def revoke_token(self, token: str, *, actor: str | None) -> str | None:
        return await self._auth.revoke_token(token, actor=actor)

    async def revoke_all(self, reviewer_id: str, *, actor: str | None) -> tuple[int, int] | None:
        return await self._auth.revoke_all(reviewer_id, actor=actor)

    async def disable_reviewer(self, reviewer_id: str, *, actor: str | None) -> Disabled | None:
        return await self._auth.disable_reviewer(reviewer_id, actor=actor)

    async def enable_reviewer(self, reviewer_id: str, *, actor: str | None) -> bool:
        return await self._auth.enable_reviewer(reviewer_id, actor=actor)

    async def sample_qa(self, period: QaPeriod, size: int | None = None) -> QaSampled:
        return await self._qa.sample(period, size)
