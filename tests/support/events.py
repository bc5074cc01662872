"""Events the integration tests start from: the one maker of a test's post."""

from __future__ import annotations

import uuid

from guardstream.contracts.events import Post, utcnow

# What a test post says unless the test says otherwise.
DEFAULT_TEXT = "某地的人都是骗子,别信他们。"


def new_test_post(
    tenant: str = "acme", text: str = DEFAULT_TEXT, *, lang: str | None = "zh"
) -> Post:
    """A post of `tenant` with a fresh event id and post id, created now; `lang=None`: one
    whose producer did not say its language (triage detects it)."""
    return Post(
        event_id=uuid.uuid4().hex,
        produced_at=utcnow(),
        post_id=f"p-{uuid.uuid4().hex[:12]}",
        tenant=tenant,
        author_id="u1",
        text=text,
        lang=lang,
        created_at=utcnow(),
    )
