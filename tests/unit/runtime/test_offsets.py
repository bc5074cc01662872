import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guardstream.runtime.offsets import OffsetTracker

pytestmark = pytest.mark.unit


def test_watermark_waits_for_the_first_unfinished_record() -> None:
    t: OffsetTracker[str] = OffsetTracker()
    t.start("p0", [10, 11, 12, 13])
    t.finish("p0", [11, 12])
    assert t.watermark("p0") == 10  # 10 is still in flight: committing 13 could skip it
    t.finish("p0", [10])
    assert t.watermark("p0") == 13
    t.finish("p0", [13])
    assert t.watermark("p0") == 14


def test_offset_gaps_are_fine() -> None:
    t: OffsetTracker[str] = OffsetTracker()
    t.start("p0", [5, 7, 9])  # compaction or transaction markers leave holes
    t.finish("p0", [5])
    assert t.watermark("p0") == 7
    t.finish("p0", [9, 7])
    assert t.watermark("p0") == 10


def test_to_commit_reports_only_moves() -> None:
    t: OffsetTracker[str] = OffsetTracker()
    t.start("a", [0, 1])
    t.start("b", [0])
    assert t.to_commit() == {"a": 0, "b": 0}
    t.committed({"a": 0, "b": 0})
    assert t.to_commit() == {}
    t.finish("a", [0, 1])
    assert t.to_commit() == {"a": 2}


def test_revoked_partitions_are_forgotten_and_late_finishes_ignored() -> None:
    t: OffsetTracker[str] = OffsetTracker()
    t.start("a", [0, 1])
    t.start("b", [0])
    t.drop(["a", "never-held"])  # a revocation may name a partition nothing was started on
    t.finish("a", [0, 1])
    assert t.watermark("a") is None
    assert t.partitions() == ["b"]
    assert t.to_commit() == {"b": 0}


def test_in_flight_counts_per_partition_and_in_all() -> None:
    t: OffsetTracker[str] = OffsetTracker()
    t.start("a", [0, 1, 2])
    t.start("b", [7])
    t.finish("a", [1])  # finished behind the unfinished 0: counted until the watermark passes
    assert (t.in_flight("a"), t.in_flight("b"), t.in_flight("c"), t.in_flight()) == (3, 1, 0, 4)
    t.finish("a", [0])
    assert (t.in_flight("a"), t.in_flight()) == (1, 2)


def test_out_of_order_start_is_a_bug() -> None:
    t: OffsetTracker[str] = OffsetTracker()
    t.start("a", [5])
    with pytest.raises(ValueError, match="out of order"):
        t.start("a", [4])


@given(st.integers(1, 60), st.randoms(use_true_random=False))
def test_watermark_never_passes_an_unfinished_offset(n: int, rnd: random.Random) -> None:
    t: OffsetTracker[str] = OffsetTracker()
    offsets = list(range(100, 100 + n))
    t.start("p", offsets)
    order = offsets[:]
    rnd.shuffle(order)
    finished: set[int] = set()
    for offset in order:
        t.finish("p", [offset])
        finished.add(offset)
        mark = t.watermark("p")
        assert mark is not None
        # Everything below the watermark is finished; the watermark itself is not (or is the end).
        assert all(o in finished for o in offsets if o < mark)
        assert mark == 100 + n or mark not in finished
    assert t.watermark("p") == 100 + n
    assert t.in_flight() == 0
