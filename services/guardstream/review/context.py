"""What a reviewer sees beside a task, without I/O: earlier decisions of the same tenant on
the same, nearly the same or similar content (with a warning when the humans who decided
near-identical content disagreed), and the author's other decided posts.

Three kinds of neighbour, strongest first: `exact` (same content key: the same normalised text
under the same policy context), `near` (same near-duplicate fingerprint and digits as the
verdict layer's index at its default threshold 0: case, punctuation, emoji and link variants)
and `semantic` (cosine of sentence embeddings, `verdict/embeddings.py`). A post is listed once,
under its strongest kind.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from guardstream.contracts.events import ReviewOutcome, Verdict
from guardstream.contracts.text import normalise
from guardstream.verdict import neardup

SIMILAR_MAX = 6  # neighbours shown: a reviewer reads them in the seconds a decision takes
AUTHOR_MAX = 8  # the author's latest decided posts shown
# Below this cosine a neighbour says little (USE multilingual v3: unrelated short posts score
# 0.0-0.3, paraphrases and translations 0.75-0.9, on the bench sentences of the docs).
SEMANTIC_MIN = 0.55
# At or above this cosine a semantic neighbour counts as near-identical for the disagreement
# warning (a translation or a one-word variant), as exact and near duplicates always do.
IDENTICAL_MIN = 0.9


class MatchKind(enum.StrEnum):
    EXACT = "exact"
    NEAR = "near"
    SEMANTIC = "semantic"


_STRENGTH = {MatchKind.EXACT: 0, MatchKind.NEAR: 1, MatchKind.SEMANTIC: 2}


@dataclass(frozen=True, slots=True)
class DecidedItem:
    """A decided task of the tenant, as the context panels show it."""

    task_id: str
    human_verdict: Verdict
    model_verdict: Verdict
    outcome: ReviewOutcome  # did the reviewer confirm or correct the model
    categories: tuple[str, ...]
    tags: tuple[str, ...]
    reason: str | None
    decided_at: datetime
    preview: str | None = None  # the head of its text; None unless the reader may read texts


@dataclass(frozen=True, slots=True)
class Neighbour:
    item: DecidedItem
    kind: MatchKind
    similarity: float  # 1.0 for exact and near duplicates

    @property
    def near_identical(self) -> bool:
        return self.kind is not MatchKind.SEMANTIC or self.similarity >= IDENTICAL_MIN


@dataclass(frozen=True, slots=True)
class AuthorHistory:
    """The author's decided posts in this tenant, newest first, and how they were decided."""

    items: tuple[DecidedItem, ...]
    decided: int  # all of the author's decided posts in the tenant (items shows the latest)
    by_verdict: dict[str, int]  # human verdict -> count, over all of them
    corrected: int  # how many of them the reviewer corrected the model on


@dataclass(frozen=True, slots=True)
class ReviewContext:
    similar: tuple[Neighbour, ...]
    conflict: tuple[Verdict, ...]  # the differing human verdicts on near-identical content
    author: AuthorHistory | None  # None: the post's author is not known (older texts)
    indexed: bool  # False: the task's text has no vector yet (only exact matches are shown)


@dataclass(frozen=True, slots=True)
class TextFeatures:
    """What the indexer stores for a text: fingerprint (None under `min_chars` of signal, as
    the verdict layer's index skips them), the signal's digits."""

    fingerprint: int | None
    digits: str


def text_features(text: str, min_chars: int = neardup.DEFAULT_MIN_CHARS) -> TextFeatures:
    norm = normalise(text.encode("utf-8", "replace").decode("utf-8"))
    found = neardup.digits(norm)
    if neardup.signal_length(norm) < min_chars:
        return TextFeatures(None, found)
    # Stored as a signed bigint: PostgreSQL has no unsigned 64-bit type.
    fp = neardup.simhash64(norm)
    return TextFeatures(fp - (1 << 64) if fp >= 1 << 63 else fp, found)


def merged(
    exact: Iterable[DecidedItem],
    near: Iterable[DecidedItem],
    semantic: Iterable[tuple[DecidedItem, float]],
    *,
    exclude: str,
    limit: int = SIMILAR_MAX,
) -> tuple[Neighbour, ...]:
    """One list, each post once under its strongest kind, strongest kinds first, then by
    similarity, then newest decision first; `exclude` (the task itself) never appears."""
    best: dict[str, Neighbour] = {}
    candidates = [
        *(Neighbour(i, MatchKind.EXACT, 1.0) for i in exact),
        *(Neighbour(i, MatchKind.NEAR, 1.0) for i in near),
        *(Neighbour(i, MatchKind.SEMANTIC, s) for i, s in semantic if s >= SEMANTIC_MIN),
    ]
    for n in candidates:
        if n.item.task_id == exclude:
            continue
        kept = best.get(n.item.task_id)
        if kept is None or _rank(n) < _rank(kept):
            best[n.item.task_id] = n
    ordered = sorted(best.values(), key=_rank)
    return tuple(ordered[:limit])


def _rank(n: Neighbour) -> tuple[int, float, float]:
    return (_STRENGTH[n.kind], -n.similarity, -n.item.decided_at.timestamp())


def conflict(neighbours: Sequence[Neighbour]) -> tuple[Verdict, ...]:
    """The human verdicts given to near-identical content when they are not all the same
    (sorted); empty when they agree or there is at most one."""
    verdicts = {n.item.human_verdict for n in neighbours if n.near_identical}
    return tuple(sorted(verdicts)) if len(verdicts) > 1 else ()


def author_history(
    items: Sequence[DecidedItem], counts: dict[str, int], corrected: int
) -> AuthorHistory:
    return AuthorHistory(
        tuple(items), sum(counts.values()), dict(sorted(counts.items())), corrected
    )
