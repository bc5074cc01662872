"""Which reviewers' labels look like poisoning (pure): a reviewer whose labels disagree with
the other judges of the same content far more often than the other reviewers' do.

For each reviewer and each content key they labelled that other reviewers labelled too, the
others' label is their consensus: a senior's QA re-review among them if there is one (the
latest), else the verdict most of them gave (each other reviewer's latest label counts once;
a tie is no consensus, and the key is not counted). The reviewer disagrees there when their
own latest verdict differs. A reviewer is a suspect when they have at least `min_overlap` such keys,
disagree on at least `rate` of them, and at least `ratio` times as often as every other
reviewer together (so a hard batch that everyone disagrees on flags no one). Their share of
the archive's corrections (labels that overrule the model) says how much they tried to teach.
The feedback cycle names suspects in its report and on the model card, and its gate rejects a
candidate whose training or evaluation sets hold a suspect's labels (`feedback/job.py`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from guardstream.contracts.events import ReviewStage, Verdict
from guardstream.contracts.feedback import FeedbackSample
from guardstream.feedback.curation import label_rank


@dataclass(frozen=True, slots=True)
class SuspectConfig:
    min_overlap: int = 3  # keys shared with other reviewers before a reviewer can be judged
    rate: float = 0.5  # disagreement with the others' label at least this …
    ratio: float = 2.0  # … and at least this many times the other reviewers' pooled rate


@dataclass(frozen=True, slots=True)
class ReviewerStanding:
    reviewer: str
    labels: int  # content keys the reviewer labelled
    corrections: int  # of which their latest label overrules the model's verdict
    correction_share: float  # of every reviewer's corrections in the window
    overlaps: int  # keys other reviewers labelled too, with a consensus
    disagreements: int  # … where the reviewer's verdict differs from the others' label
    disagreement_rate: float
    others_rate: float  # every other reviewer's pooled disagreement rate
    suspect: bool

    def as_dict(self) -> dict[str, str | int | float | bool]:
        out = asdict(self)
        for name in ("correction_share", "disagreement_rate", "others_rate"):
            out[name] = round(out[name], 4)
        return out

    def describe(self) -> str:
        return (
            f"{self.reviewer}: disagrees with the other judges on {self.disagreements} of "
            f"{self.overlaps} shared items ({self.disagreement_rate:.0%}; others "
            f"{self.others_rate:.0%}), {self.correction_share:.0%} of the corrections"
        )


def consensus(labels: list[FeedbackSample]) -> Verdict | None:
    """The others' label (see the module docstring); None without one."""
    qa = [s for s in labels if s.stage is ReviewStage.QA]
    if qa:
        return max(qa, key=label_rank).human_verdict
    votes = Counter(s.human_verdict for s in labels).most_common(2)
    if not votes or (len(votes) == 2 and votes[0][1] == votes[1][1]):
        return None
    return votes[0][0]


def audit_reviewers(
    samples: Iterable[FeedbackSample], config: SuspectConfig = SuspectConfig()
) -> list[ReviewerStanding]:
    """Every reviewer's standing in `samples`, suspects first, then by reviewer id."""
    # Each reviewer's latest label per content key.
    own: dict[str, dict[str, FeedbackSample]] = {}
    for sample in samples:
        mine = own.setdefault(sample.reviewer, {})
        current = mine.get(sample.content_key)
        if current is None or label_rank(sample) > label_rank(current):
            mine[sample.content_key] = sample
    by_key: dict[str, list[FeedbackSample]] = {}
    for mine in own.values():
        for key, sample in mine.items():
            by_key.setdefault(key, []).append(sample)
    tallies: dict[str, tuple[int, int]] = {}
    for reviewer, mine in own.items():
        overlaps = disagreements = 0
        for key, sample in mine.items():
            theirs = consensus([s for s in by_key[key] if s.reviewer != reviewer])
            if theirs is None:
                continue
            overlaps += 1
            disagreements += theirs is not sample.human_verdict
        tallies[reviewer] = (overlaps, disagreements)
    corrections = {r: sum(s.disagrees for s in mine.values()) for r, mine in own.items()}
    all_corrections = sum(corrections.values())
    all_overlaps = sum(o for o, _ in tallies.values())
    all_disagreements = sum(d for _, d in tallies.values())
    out = []
    for reviewer, (overlaps, disagreements) in tallies.items():
        rest_overlaps = all_overlaps - overlaps
        others_rate = (all_disagreements - disagreements) / rest_overlaps if rest_overlaps else 0.0
        rate = disagreements / overlaps if overlaps else 0.0
        suspect = (
            overlaps >= config.min_overlap
            and rate >= config.rate
            and rate >= config.ratio * others_rate
        )
        out.append(
            ReviewerStanding(
                reviewer=reviewer,
                labels=len(own[reviewer]),
                corrections=corrections[reviewer],
                correction_share=corrections[reviewer] / all_corrections if all_corrections else 0,
                overlaps=overlaps,
                disagreements=disagreements,
                disagreement_rate=rate,
                others_rate=others_rate,
                suspect=suspect,
            )
        )
    return sorted(out, key=lambda s: (not s.suspect, s.reviewer))
