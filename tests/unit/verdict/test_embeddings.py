"""Sentence embeddings for review context (issue 22): the bundled multilingual model puts a
Chinese post near its English translation and far from unrelated posts, any text (NUL, lone
surrogates, megabytes) embeds to a unit row, and storage and search are exact enough."""

from __future__ import annotations

import unicodedata

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings

from guardstream.verdict.embeddings import (
    MAX_CHARS,
    embeddable,
    from_bytes,
    nearest,
    shared_embedder,
    to_bytes,
)
from tests.unit.review.test_console_render import hostile_text

pytestmark = pytest.mark.unit


def test_a_translation_is_nearer_than_an_unrelated_post() -> None:
    model = shared_embedder()
    v = model.embed(
        [
            "那个省的人都是骗子，大家小心。",
            "People from that province are all liars, be careful.",
            "今天天气很好，我们去公园散步吧。",
            "The weather is lovely today, let's walk in the park.",
        ]
    )
    assert v.shape == (4, model.dim) and v.dtype == np.float32
    sims = v @ v.T
    assert sims[0, 1] > 0.6 and sims[2, 3] > 0.6  # translations meet across languages
    assert sims[0, 1] > sims[0, 2] + 0.3 and sims[0, 1] > sims[0, 3] + 0.3
    assert np.allclose(model.embed(["那个省的人都是骗子，大家小心。"])[0], v[0], atol=1e-5)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_text)
@example("")
@example("\x00" * 10)
@example("\ud800 lone surrogate \udfff")
@example("长" * 200_000)
def test_any_text_embeds_to_a_unit_row(text: str) -> None:
    prepared = embeddable(text)
    assert len(prepared) <= MAX_CHARS
    prepared.encode("utf-8")  # valid UTF-8: no lone surrogate left
    assert not any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp") for ch in prepared)
    row = shared_embedder().embed([text])[0]
    assert np.isfinite(row).all()
    assert abs(float(np.linalg.norm(row)) - 1.0) < 1e-3


def test_stored_vectors_round_trip_and_search_finds_the_best() -> None:
    rng = np.random.default_rng(7)
    matrix = rng.normal(size=(500, 512)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    back = np.stack([from_bytes(to_bytes(r), 512) for r in matrix])
    assert np.abs(back - matrix).max() < 1e-3
    with pytest.raises(ValueError, match="float16"):
        from_bytes(b"\x00" * 10, 512)
    query = matrix[42] + 0.01 * matrix[7]
    query /= np.linalg.norm(query)
    hits = nearest(back, query, 5)
    assert hits[0][0] == 42
    assert [i for i, _ in hits] == list(np.argsort(-(back @ query))[:5])
    assert nearest(back, query, 0) == [] and len(nearest(back[:3], query, 10)) == 3
