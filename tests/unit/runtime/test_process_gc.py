"""A consumer process freezes what start-up built and collects young objects less often."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from guardstream.runtime.process import GC_THRESHOLDS, settle_garbage_collector

pytestmark = pytest.mark.unit


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_gc")
def test_start_up_objects_are_frozen_and_young_ones_collected_less_often() -> None:
    built_at_start = [{"pack": n} for n in range(1000)]
    settle_garbage_collector()
    assert gc.get_freeze_count() >= len(built_at_start)
    assert gc.get_threshold() == GC_THRESHOLDS
    assert GC_THRESHOLDS[0] > 700  # Python's default, which the records of a batch outlive
