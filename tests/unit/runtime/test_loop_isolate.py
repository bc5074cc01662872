"""`runtime.loop.isolate`: a batch failing because of some records' data is halved until each such
record fails alone; every other record is handled, each offender dead-lettered once."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from aiokafka import ConsumerRecord
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from guardstream.contracts.errors import TransientError
from guardstream.contracts.events import ContractError, Post
from guardstream.runtime.loop import Record, Records, isolate, unusable

pytestmark = pytest.mark.unit

STORE_ERRORS = (asyncpg.exceptions.DataError,)


def record(offset: int, bad: bool) -> Record:
    value = b"bad" if bad else b"good"
    return ConsumerRecord("t", 0, offset, 0, 0, None, value, None, 0, len(value), [])


class Store:
    """Refuses a whole batch (atomically) when it holds a bad record, as PostgreSQL would."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.stored: list[int] = []
        self.calls = 0

    async def handle(self, records: Records) -> None:
        self.calls += 1
        if any(r.value == b"bad" for r in records):
            raise self.error
        self.stored += [r.offset for r in records]


def run(store: Store, records: list[Record]) -> list[tuple[int, str]]:
    dead: list[tuple[int, str]] = []

    async def dead_letter(rec: Record, error: ContractError) -> None:
        dead.append((rec.offset, error.reason))

    asyncio.run(isolate(records, store.handle, lambda e: unusable(e, STORE_ERRORS), dead_letter))
    return dead


@given(st.lists(st.booleans(), min_size=1, max_size=200))
def test_every_good_record_is_stored_and_every_bad_one_dead_lettered_once(
    bad: list[bool],
) -> None:
    records = [record(n, b) for n, b in enumerate(bad)]
    store = Store(asyncpg.exceptions.CharacterNotInRepertoireError("0x00"))
    dead = run(store, records)
    assert sorted(store.stored) == [n for n, b in enumerate(bad) if not b]
    assert dead == [(n, "store_rejected") for n, b in enumerate(bad) if b]
    assert store.stored == sorted(store.stored)  # the halves keep each partition's order
    if sum(bad) == 1:  # one offender costs a logarithmic number of retries, not one per record
        assert store.calls <= 2 * len(bad).bit_length() + 1


@pytest.mark.parametrize(
    "error", [TransientError("down"), RuntimeError("bug"), asyncpg.PostgresConnectionError("x")]
)
def test_infrastructure_faults_and_bugs_are_not_a_record_s_fault(error: BaseException) -> None:
    store = Store(error)
    with pytest.raises(type(error)):
        run(store, [record(0, False), record(1, True)])
    assert store.calls == 1


def test_the_reasons_name_the_kind_of_refusal_never_the_value() -> None:
    refused = unusable(
        asyncpg.exceptions.CharacterNotInRepertoireError("secret 0x00"), STORE_ERRORS
    )
    assert refused is not None and refused.reason == "store_rejected"
    assert "secret" not in refused.detail and "CharacterNotInRepertoireError" in refused.detail
    try:
        Post.model_validate({"text": "secret"})
    except ValidationError as exc:
        invalid = unusable(exc)
    assert invalid is not None and invalid.reason == "unprocessable"
    assert "secret" not in invalid.detail
    contract = ContractError("text_too_long", "text has 9 characters, limit 8")
    assert unusable(contract) is contract
    assert unusable(OSError("disk")) is None
