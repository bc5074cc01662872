"""When triage calls the scorer unavailable: one of its own requests waited too long."""

import pytest

from guardstream.triage.watch import CommitLagWatch

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(committed: dict[int, int], clock: Clock) -> CommitLagWatch:
    async def read() -> dict[int, int]:
        return dict(committed)

    return CommitLagWatch(read, after_s=60, clock=clock)


async def test_an_unanswered_request_older_than_the_window_means_unavailable() -> None:
    clock, committed = Clock(), {0: -1, 1: -1}
    watch = make(committed, clock)
    watch.sent(0, 9)
    clock.now += 59
    await watch.poll()
    assert not watch.unavailable()
    clock.now += 2
    await watch.poll()
    assert watch.unavailable()
    assert watch.oldest_wait_s() == pytest.approx(61)


async def test_commits_past_a_request_answer_it() -> None:
    clock, committed = Clock(), {0: -1}
    watch = make(committed, clock)
    watch.sent(0, 9)
    clock.now += 30
    watch.sent(0, 19)
    clock.now += 31
    committed[0] = 10  # the first batch (offsets ..9) is done, the second is 31 s old
    await watch.poll()
    assert not watch.unavailable()
    clock.now += 30
    await watch.poll()
    assert watch.unavailable()  # the second has waited 61 s
    committed[0] = 20
    await watch.poll()
    assert not watch.unavailable()
    assert watch.oldest_wait_s() == 0


async def test_a_slow_scorer_that_keeps_committing_stays_available() -> None:
    clock, committed = Clock(), {0: -1}
    watch = make(committed, clock)
    for step in range(20):  # a backlog of 20 batches, answered 40 s after each was sent
        watch.sent(0, 10 * step + 9)
        clock.now += 20
        committed[0] = 10 * (step - 1) + 10 if step else -1
        await watch.poll()
        assert not watch.unavailable()


async def test_other_partitions_do_not_answer_for_a_stuck_one() -> None:
    clock, committed = Clock(), {0: -1, 1: -1}
    watch = make(committed, clock)
    watch.sent(0, 4)
    watch.sent(1, 4)
    clock.now += 61
    committed[1] = 5
    await watch.poll()
    assert watch.unavailable()


async def test_no_requests_no_outage() -> None:
    clock = Clock()
    watch = make({}, clock)
    clock.now += 10_000
    await watch.poll()
    assert not watch.unavailable()
