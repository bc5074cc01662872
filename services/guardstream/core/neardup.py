"""Near-duplicate index: a trivial variant of an already-decided post finds that post's key.

DRAFT
"""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata

log = logging.getLogger(__name__)

SHINGLE = 4
DEFAULT_THRESHOLD = 3
DEFAULT_MIN_CHARS = 24

# Links are stripped before fingerprinting: spam waves rotate them.
_URL = re.compile(r"(?:https?://|www\.)\S+|\b(?:[a-z0-9-]+\.)+[a-z]{2,}/\S*", re.IGNORECASE)
_DIGITS = re.compile(r"\d+")
_KEPT_CATEGORIES = frozenset("LNM")
# _BIT_OF[i] maps a byte to 1 where bit i is set, so bytes.translate + count tallies one bit
# position over every feature hash at C speed.
_BIT_OF = [bytes((value >> bit) & 1 for value in range(256)) for bit in range(8)]


def signal(text: str) -> str:
    """What the fingerprint sees: letters, digits and marks, casefolded, links removed."""
    stripped = _URL.sub(" ", text.casefold())
    return "".join(ch for ch in stripped if unicodedata.category(ch)[0] in _KEPT_CATEGORIES)


def numbers(text: str) -> tuple[str, ...]:
    """The digit runs of `text` in order (links excluded)."""
    return tuple(_DIGITS.findall(_URL.sub(" ", text)))


def simhash64(text: str, *, shingle: int = SHINGLE) -> int:
    sig = signal(text)
    if len(sig) <= shingle:
        features = {sig} if sig else set()
    else:
        features = {sig[i : i + shingle] for i in range(len(sig) - shingle + 1)}
    if not features:
        return 0
    digests = b"".join(
        hashlib.blake2b(f.encode("utf-8", "surrogatepass"), digest_size=8).digest()
        for f in features
    )
    half = len(features)
    fingerprint = 0
    for byte in range(8):
        column = digests[byte::8]
        for bit in range(8):
            if 2 * column.translate(_BIT_OF[bit]).count(1) > half:
                fingerprint |= 1 << (8 * byte + bit)
    return fingerprint


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()
