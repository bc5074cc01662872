"""A request's optional ids default only when absent or null (issue 20, found by the
schemathesis run): any other value, falsy ones included, is the post contract's to judge, so
`"author_id": []` is refused as the OpenAPI document says, not silently made anonymous."""

from __future__ import annotations

import orjson
import pytest

from guardstream.api.protocol import ANONYMOUS_AUTHOR, DEFAULT_TENANT, post_event
from guardstream.contracts.events import ContractError, Post, utcnow

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("name", ["post_id", "author_id", "event_id"])
@pytest.mark.parametrize("value", [[], "", 0, False, {}])
def test_a_falsy_id_is_judged_not_replaced(name: str, value: object) -> None:
    raw = post_event({"text": "hi", name: value}, utcnow())
    assert orjson.loads(raw)[name] == value
    with pytest.raises(ContractError):
        Post.from_json(raw)


def test_absent_or_null_ids_get_their_defaults() -> None:
    for item in ({"text": "hi"}, {"text": "hi", "post_id": None, "author_id": None}):
        post = Post.from_json(post_event(item, utcnow()))
        assert post.author_id == ANONYMOUS_AUTHOR and post.tenant == DEFAULT_TENANT
        assert post.post_id.startswith("api-") and post.event_id.startswith("api-")
    with pytest.raises(ContractError):  # the tenant is not nullable
        Post.from_json(post_event({"text": "hi", "tenant": None}, utcnow()))
