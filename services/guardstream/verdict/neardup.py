"""Near-duplicate index: a trivial variant of an already-decided post finds that post's key.

A false match hands one post another post's verdict, so the matcher is built for precision.
The fingerprint sees only the signal: letters, digits and combining marks of the normalised
text, casefolded, links removed. Case, punctuation, spacing, emoji, symbols and links (added,
removed or rotated) change nothing, so such variants get the very same fingerprint. Posts
whose digits differ never meet (the digits are hashed into the bucket key beside the scope):
"at 5" and "at 7" are different posts, whatever the fingerprints say.

`bench/neardup.py`, 2,000 posts of 20-400 characters (40% Chinese; half in families of hard
negatives one word or one number apart), nine trivial variants each, min_chars 24:

    threshold  recall   false-match  hard-negative     (recall by kind at 0: case, punctuation,
        0      73.4%      0.00%        0.00%            emoji, link, spacing, mixed 99.3-100%;
        1      73.4%      0.06%        0.06%            one or two typos 2.6%; two words
        3      73.4%      0.13%        0.12%            swapped 0%. 3,032 variants equal to
        4      73.6%      0.49%        0.42%            their post after `normalise` - all the
        6      74.8%      3.32%        2.88%            zero-width ones - are the verdict
        8      77.7%     10.81%        9.84%            cache's and left out.)

6,000 posts: 0 false matches at threshold 0, 0.02% at 1. Posts up to 3,000 characters
(`--max-length 3000`): 0 up to threshold 1, 0.07% at 2; 0 in every length bucket at 0. (The
first fingerprint, blake2b per shingle, measured the same at threshold 0 and 0 up to 2 on
6,000 posts; one hard-negative pair now lands at distance 1 - nothing the default sees.)

Why these choices:

- Shingles grow with the text, `max(4, ceil(signal length / 8))` characters, padded at both
  ends: one changed character changes ~1/9 of the features wherever it is and moves the
  fingerprint ~10 bits at any length. With fixed shingles a 64-bit SimHash cannot see one
  changed word in a long post: 4-grams gave 0.3% false matches at threshold 0 on this corpus,
  8-grams 2-15% on one-word hard negatives of 512-3,000 characters.
- Shingle hashes come from prefix sums (`fingerprints`), so a whole batch of texts is hashed,
  deduplicated and tallied in some twenty numpy passes whatever the shingle size: ~30 µs per
  bench post in batches of 500 (the per-shingle blake2b of version 1 took 150-250 µs alone).
  Features stay a set per text: a post that pads itself with repetition ("lol lol … kill
  you") weighs its padding once, so the padding cannot drown the word that differs.
- Threshold 0. Typos and swapped words are as far from their post as one changed word is from
  a hard negative (~10 bits), so tolerance buys typo recall and false matches at about the
  same rate (threshold 8: +4 points recall, +11 points false matches). 0 keeps a margin: a
  one-letter substitution leaves the fingerprint equal ~3 times in 100,000 (binomial; 1 of
  30,000 measured), and thresholds 1-2 recall nothing more on the bench.
- min_chars 24, counting ideographs twice (12 Chinese characters): no false match was measured
  below it either (`--min-length 6 --min-chars 1`: 0 in 86 short hard-negative pairs), so it
  is a judgement, not a measurement: what the signal drops (an emoji, a "?") weighs more in a
  short post. It costs 0.7% of the English variants of the 20-400 corpus.
- `threshold + 1` bands (one 64-bit band at threshold 0): fingerprints within the threshold
  share at least one band exactly (pigeonhole), so one lookup per band finds every candidate,
  then checked by exact distance. The fewest bands make the widest buckets, which unrelated
  posts share only by chance (1 in 2**(64 / bands)).

Blind spots, by design: a post differing from another only in an emoji, symbol, link or
punctuation ("see you tonight 🔪" / "see you tonight 🌹") matches it; traditional/simplified
Chinese are not folded (cross-script homoglyphs are, by `normalise`).

Redis is an optimisation as for the verdict cache (`FailOpenStore`): a timeout, a connection
error or an unreadable member is no match, and the post is scored. Each bucket keeps its
newest `bucket_max` members, so a spam wave cannot grow one without bound.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import re
import time
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
import redis.asyncio as aioredis

from guardstream.runtime.redisstore import FailOpenStore, Unavailable, redis_client
from guardstream.runtime.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0
DEFAULT_MIN_CHARS = 24
DEFAULT_BUCKET_MAX = 32
MIN_SHINGLE = 4
# A shingle spans 1/SHINGLE_SHARE of the text: one edit changes ~1/(SHINGLE_SHARE + 1) of the
# features (cosine 8/9, ~10 of 64 bits expected to flip) whatever the text's length.
SHINGLE_SHARE = 8
# Part of every bucket key: fingerprints of another version never meet these.
FINGERPRINT_VERSION = 2

# Rotated in spam waves and not read by the model for meaning; dropped before fingerprinting.
_URL = re.compile(r"(?:https?://|www\.)\S+|\b(?:[a-z0-9-]+\.)+[a-z]{2,}/\S*", re.IGNORECASE)
_HEX64 = re.compile(r"[0-9a-f]{16}")
_NOT_DECIMAL = re.compile(r"\D+")  # \d is exactly str.isdecimal (Unicode Nd)
_KEPT_CATEGORIES = frozenset("LNM")
_ASCII_NOISE = bytes(c for c in range(128) if not chr(c).isalnum())
# Beyond the Basic Multilingual Plane the table answers without remembering (bounded size).
_REMEMBERED = 0x10000

# Shingle hashes: a polynomial over code points modulo two 31-bit primes, read off prefix
# sums so that a whole batch of texts is hashed in a few numpy passes whatever the shingle
# size. Two primes: 62 bits, and unlike arithmetic modulo 2**64 no string family is known to
# collide for every base. The pair is then mixed (splitmix64's finaliser) so that every bit
# of a feature depends on every character of its shingle.
_PRIMES = (2_147_483_647, 2_147_483_629)
_BASE = 1_000_003
_SPACES_KEPT = 4096
# Texts are fingerprinted in chunks of about this many padded characters (bounded memory:
# the bit tally holds 64 bytes per feature).
_CHUNK_CHARS = 1 << 16


class _Signal(dict[int, int | None]):
    """`str.translate` table keeping letters, digits and marks, filled on first sight."""

    def __missing__(self, code: int) -> int | None:
        value = code if unicodedata.category(chr(code))[0] in _KEPT_CATEGORIES else None
        if code < _REMEMBERED:
            self[code] = value
        return value


_SIGNAL = _Signal()


def signal(text: str) -> str:
    """The part of a normalised text the fingerprint sees (see the module docstring)."""
    folded = text.casefold()
    if "/" in folded or "www." in folded:  # the link pattern is slow; most posts have none
        folded = _URL.sub(" ", folded)
    if folded.isascii():
        return folded.encode("ascii").translate(None, _ASCII_NOISE).decode("ascii")
    return folded.translate(_SIGNAL)


def signal_length(text: str) -> int:
    """Length of the signal with East Asian wide characters counted twice.

    One ideograph says about as much as two Latin letters (Twitter weighs them the same way),
    so `min_chars` asks for the same amount of content in Chinese as in English.
    """
    return _length_of_signal(signal(text))


def _length_of_signal(sig: str) -> int:
    if sig.isascii():
        return len(sig)
    return len(sig) + sum(unicodedata.east_asian_width(ch) in "WF" for ch in sig)


def digits(text: str) -> str:
    """The decimal digits of the signal, in order: two posts match only if these are equal.

    Separators between digits are ignored as the fingerprint ignores them, so "1 0" and "10"
    agree and a spaced-out number is still the same post.
    """
    return _digits_of_signal(signal(text))


def _digits_of_signal(sig: str) -> str:
    return "" if sig.isalpha() else _NOT_DECIMAL.sub("", sig)


def shingle_size(signal_chars: int) -> int:
    return max(MIN_SHINGLE, math.ceil(signal_chars / SHINGLE_SHARE))


class _Powers:
    """BASE**i and BASE**-i modulo each prime for i < len, grown by doubling on demand."""

    def __init__(self) -> None:
        self._tables = [(np.ones(1, np.uint64), np.ones(1, np.uint64), prime) for prime in _PRIMES]

    def upto(self, n: int) -> list[tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64], int]]:
        while len(self._tables[0][0]) < n:
            grown = []
            for up, down, prime in self._tables:
                size = len(up)
                step_up = np.uint64(pow(_BASE, size, prime))
                step_down = np.uint64(pow(_BASE, -size, prime))
                prime_u = np.uint64(prime)
                grown.append(
                    (
                        np.concatenate([up, up * step_up % prime_u]),
                        np.concatenate([down, down * step_down % prime_u]),
                        prime,
                    )
                )
            self._tables = grown
        return self._tables


_POWERS = _Powers()


def simhash64(text: str) -> int:
    """64-bit SimHash of `text`'s signal; 0 when there is none. Stable across processes."""
    return fingerprints([signal(text)])[0]


def fingerprints(signals: Sequence[str]) -> list[int]:
    """SimHash of each signal (see `signal`), computed for all of them at once: the features
    of a text are its distinct shingles of `shingle_size` characters (zero-padded at both
    ends, so every character is in exactly that many), each fingerprint bit the majority of
    that bit over the features' hashes. An empty signal has fingerprint 0."""
    out = [0] * len(signals)
    chunk: list[int] = []
    chars = 0
    for index, sig in enumerate(signals):
        if not sig:
            continue
        padded = len(sig) + 2 * (shingle_size(len(sig)) - 1)
        if chunk and chars + padded > _CHUNK_CHARS:
            _fingerprint_chunk(signals, chunk, out)
            chunk, chars = [], 0
        chunk.append(index)
        chars += padded
    if chunk:
        _fingerprint_chunk(signals, chunk, out)
    return out


def _fingerprint_chunk(signals: Sequence[str], chunk: list[int], out: list[int]) -> None:
    sizes = [shingle_size(len(signals[i])) for i in chunk]
    lengths = np.array([len(signals[i]) for i in chunk], np.int64)
    pads = np.array(sizes, np.int64) - 1
    text = "".join(
        "\0" * (size - 1) + signals[i] + "\0" * (size - 1)
        for i, size in zip(chunk, sizes, strict=True)
    )
    codes = np.frombuffer(text.encode("utf-32-le"), "<u4").astype(np.uint64)
    # Shingle w of text t starts at offset(t) + w, for w < length + pad; all have t's size.
    windows = lengths + pads
    offsets = np.concatenate([[0], np.cumsum(lengths + 2 * pads)[:-1]])
    owner = np.repeat(np.arange(len(chunk)), windows)
    first = np.concatenate([[0], np.cumsum(windows)[:-1]])
    starts = offsets[owner] + np.arange(len(owner)) - first[owner]
    ends = starts + (pads + 1)[owner]
    lasts = ends - 1
    halves = []
    for up, down, prime in _POWERS.upto(len(codes) + 1):
        p = np.uint64(prime)
        # prefix[k] = sum of code[j] * BASE**-j for j < k, so the shingle [s, e) hashes to
        # (prefix[e] - prefix[s]) * BASE**(e - 1) = sum of code[j] * BASE**(e - 1 - j).
        # The prefix sums are left unreduced: each term is below 2**31 and a chunk holds far
        # fewer than 2**33 characters, so they stay exact in 64 bits and never decrease; the
        # difference reduced once is the shingle's sum modulo p, and times a power below
        # 2**31 it stays below 2**62 for the last reduction.
        prefix = np.zeros(len(codes) + 1, np.uint64)
        np.cumsum(codes * down[: len(codes)] % p, out=prefix[1:])
        halves.append((prefix[ends] - prefix[starts]) % p * up[lasts] % p)
    features = _mix(halves[0] << np.uint64(32) | halves[1])
    features, owner = _distinct(features, owner)
    counts = np.bincount(owner, minlength=len(chunk))
    out_of = np.concatenate([[0], np.cumsum(counts)[:-1]])
    # The majority of each bit: 0/1 bytes summed eight at a time as uint64 words, in runs of at
    # most 255 features so that no byte carries into the next; then the runs of each text.
    bits = np.unpackbits(
        features.astype("<u8", copy=False).view(np.uint8).reshape(-1, 8),
        axis=1,
        bitorder="little",
    )
    runs = -(-counts // 255)
    run_first = np.concatenate([[0], np.cumsum(runs)[:-1]])
    run_owner = np.repeat(np.arange(len(chunk)), runs)
    run_starts = out_of[run_owner] + (np.arange(len(run_owner)) - run_first[run_owner]) * 255
    per_run = np.add.reduceat(bits.view("<u8"), run_starts, axis=0)
    ones = np.add.reduceat(per_run.view(np.uint8), run_first, axis=0, dtype=np.uint32)
    majority = 2 * ones > counts[:, None]
    packed = np.packbits(majority, axis=1, bitorder="little").view("<u8").ravel()
    for index, value in zip(chunk, packed.tolist(), strict=True):
        out[index] = value


def _distinct(
    features: npt.NDArray[np.uint64], owner: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.int64]]:
    """Each text's features as a set (its first occurrence of each kept, in order): a text
    that repeats itself ("lol lol lol … kill you") weighs its repeated part once, so padding
    cannot drown what differs.

    Sorted by (text, low 48 bits), stably - the texts come in order already, and numpy's
    stable sort is about twice as fast as its default here: equal features of a text end up
    side by side, and only those neighbours whose keys are equal (few: true repeats) are
    compared whole; in the unlikely event that two different features of a text share their
    low 48 bits, an exact two-key sort decides instead.
    """
    key = owner.astype(np.uint64) << np.uint64(48) | features & np.uint64((1 << 48) - 1)
    order = np.argsort(key, kind="stable")
    ranked_key = key[order]
    ties = np.flatnonzero(ranked_key[1:] == ranked_key[:-1])
    if not len(ties):
        return features, owner
    if not np.array_equal(features[order[ties]], features[order[ties + 1]]):
        order = np.lexsort((features, owner))
        ranked = features[order]
        same = (ranked[1:] == ranked[:-1]) & (owner[order][1:] == owner[order][:-1])
        ties = np.flatnonzero(same)
    repeat = np.zeros(len(features), bool)
    repeat[order[ties + 1]] = True
    return features[~repeat], owner[~repeat]


def _mix(values: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """splitmix64's finaliser: a bijection of 64-bit words in which every output bit depends
    on every input bit (wrapping arithmetic is what numpy does on uint64 arrays)."""
    values = values ^ (values >> np.uint64(30))
    values = values * np.uint64(0xBF58476D1CE4E5B9)
    values = values ^ (values >> np.uint64(27))
    values = values * np.uint64(0x94D049BB133111EB)
    return values ^ (values >> np.uint64(31))


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def band_count(threshold: int) -> int:
    """The fewest bands that fingerprints within `threshold` bits always share one of.

    `threshold` differing bits fall in at most `threshold` bands, so with one more band at
    least one is untouched (pigeonhole). Fewer, wider bands keep unrelated posts out of each
    other's buckets: a b-bit band value is shared by chance with 1 post in 2**b.
    """
    return threshold + 1


def bands(fingerprint: int, count: int) -> tuple[int, ...]:
    """`fingerprint` cut into `count` contiguous bit ranges, widths differing by at most 1."""
    out: list[int] = []
    start = 0
    for index in range(count):
        width = 64 // count + (1 if index < 64 % count else 0)
        out.append((fingerprint >> start) & ((1 << width) - 1))
        start += width
    return tuple(out)


def near_scope(context: bytes, tenant: str | None) -> str:
    """The scope near-duplicates are sought in: the content key's context (`contracts.text.
    key_context`: kind, prompt context, model, adapter, prompt policy) and the tenant, or None
    when the post's pack shares model verdicts (`share_model_verdicts`) - then sharing packs'
    tenants meet in one scope. Like an exact cache hit, a near match on another tenant's post
    would tell this tenant that the other one saw (almost) this text."""
    h = hashlib.blake2b(context, digest_size=16, person=b"gs-nearscope2")
    # `context` is a fixed number of length-framed parts: what follows it is the tenant alone.
    h.update(b"*" if tenant is None else b"=" + tenant.encode("utf-8", "surrogatepass"))
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class NearMatch:
    content_key: str
    distance: int


class NearDuplicateIndex(Protocol):
    """Items are (content key, normalised text); `scope` (`near_scope`) is everything else that
    must be equal for a verdict to carry over (kind, prompt context, model, adapter, prompt
    policy, and the tenant unless the pack shares model verdicts).

    `find_many` answers, for each item that has one, the nearest post added earlier in the same
    scope under a *different* content key; `add_many` records decided posts. Neither raises for
    trouble in the backing store: that is no match and no record.
    """

    async def find_many(
        self, scope: str, items: Sequence[tuple[str, str]]
    ) -> dict[str, NearMatch]: ...

    async def add_many(self, scope: str, items: Sequence[tuple[str, str]]) -> None: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class _Entry:
    content_key: str
    fingerprint: int
    buckets: tuple[str, ...]


class RedisNearDuplicateIndex(FailOpenStore):
    """`NearDuplicateIndex` on Redis sorted sets, one per (scope, digits, band, band value).

    Members are `content_key:fingerprint` (16 hex digits) scored by insertion time in
    milliseconds; each bucket keeps its newest `bucket_max` members and expires `ttl_s` after
    its last write. Entries older than `ttl_s` are ignored even in a bucket kept alive by
    newer ones.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str,
        ttl_s: int,
        timeout_s: float,
        threshold: int = DEFAULT_THRESHOLD,
        min_chars: int = DEFAULT_MIN_CHARS,
        bucket_max: int = DEFAULT_BUCKET_MAX,
    ) -> None:
        if not 0 <= threshold < 32:
            raise ValueError("threshold: 0..31 bits")
        if min_chars < 1 or bucket_max < 1 or ttl_s < 1 or timeout_s <= 0:
            raise ValueError("min_chars, bucket_max, ttl_s and timeout_s must be positive")
        super().__init__(client, what="near_duplicate_index", timeout_s=timeout_s)
        self._prefix = prefix + f"nd{FINGERPRINT_VERSION}:"
        self._ttl_s = ttl_s
        self._threshold = threshold
        self._min_chars = min_chars
        self._bucket_max = bucket_max
        self._bands = band_count(threshold)
        # EVALSHA, loading the script on first use and again after a flush (NOSCRIPT).
        self._find = client.register_script(_FIND_SCRIPT)
        self._spaces: dict[str, str] = {}  # scope → its bucket space for posts without digits

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisNearDuplicateIndex:
        return cls(
            redis_client(settings),
            prefix=settings.cache_prefix,
            ttl_s=settings.redis.cache_ttl_s,
            timeout_s=settings.redis.timeout_ms / 1000,
        )

    def _entries(self, scope: str, items: Iterable[tuple[str, str]]) -> list[_Entry]:
        keyed: dict[str, str] = {}  # content key → signal, for the texts long enough to match
        for key, text in items:
            sig = signal(text)
            if key in keyed or (
                len(sig) < self._min_chars and _length_of_signal(sig) < self._min_chars
            ):
                continue
            keyed[key] = sig
        entries: list[_Entry] = []
        prints = fingerprints(list(keyed.values()))
        for (key, sig), fingerprint in zip(keyed.items(), prints, strict=True):
            space = self._space(scope, _digits_of_signal(sig))
            buckets = tuple(
                f"{space}:{band}:{value:x}"
                for band, value in enumerate(bands(fingerprint, self._bands))
            )
            entries.append(_Entry(key, fingerprint, buckets))
        return entries

    def _space(self, scope: str, digit_string: str) -> str:
        if not digit_string:  # most posts: one space per scope, worked out once
            space = self._spaces.get(scope)
            if space is None:
                if len(self._spaces) >= _SPACES_KEPT:
                    self._spaces.clear()
                space = self._spaces[scope] = self._digit_space(scope, "")
            return space
        return self._digit_space(scope, digit_string)

    def _digit_space(self, scope: str, digit_string: str) -> str:
        h = hashlib.blake2b(digest_size=12, person=b"gs-ndscope1")
        for part in (scope, digit_string):
            encoded = part.encode("utf-8", "surrogatepass")
            h.update(len(encoded).to_bytes(8, "big"))
            h.update(encoded)
        return self._prefix + h.hexdigest()

    async def find_many(self, scope: str, items: Sequence[tuple[str, str]]) -> dict[str, NearMatch]:
        entries = self._entries(scope, items)
        if not entries:
            return {}
        buckets = list(dict.fromkeys(b for e in entries for b in e.buckets))
        oldest_ms = (time.time() - self._ttl_s) * 1000
        try:
            async with self.attempt("find") as redis:
                # One round trip and one reply for the whole batch, however many buckets.
                replies = await self._find(keys=buckets, args=[oldest_ms], client=redis)
        except Unavailable:
            return {}
        members: dict[str, list[tuple[str, int, float]]] = {}
        corrupt = 0
        for bucket, reply in zip(buckets, replies, strict=True):
            parsed = members.setdefault(bucket, [])
            for raw, score in zip(reply[::2], reply[1::2], strict=True):
                member = _parse_member(raw)
                if member is None:
                    corrupt += 1
                else:
                    parsed.append((*member, float(score)))
        if corrupt:
            log.warning("ignoring corrupt near-duplicate members", extra={"count": corrupt})
        found: dict[str, NearMatch] = {}
        for entry in entries:
            best: tuple[int, float, str] | None = None
            for bucket in entry.buckets:
                for key, fingerprint, added_ms in members[bucket]:
                    if key == entry.content_key:
                        continue
                    distance = hamming(entry.fingerprint, fingerprint)
                    # Nearest first; among equals the newest, whose verdict is most current.
                    if distance <= self._threshold and (
                        best is None or (distance, -added_ms) < (best[0], -best[1])
                    ):
                        best = (distance, added_ms, key)
            if best is not None:
                found[entry.content_key] = NearMatch(best[2], best[0])
        return found

    async def add_many(self, scope: str, items: Sequence[tuple[str, str]]) -> None:
        entries = self._entries(scope, items)
        if not entries:
            return
        now_ms = time.time() * 1000
        with contextlib.suppress(Unavailable):
            async with self.attempt("add") as redis:
                pipe = redis.pipeline(transaction=False)
                for entry in entries:
                    member = f"{entry.content_key}:{entry.fingerprint:016x}"
                    for bucket in entry.buckets:
                        pipe.zadd(bucket, {member: now_ms})
                        pipe.zremrangebyscore(bucket, "-inf", now_ms - self._ttl_s * 1000)
                        pipe.zremrangebyrank(bucket, 0, -self._bucket_max - 1)
                        pipe.expire(bucket, self._ttl_s)
                await pipe.execute()


# Every member of each bucket (KEYS) scored at least ARGV[1], with its score, in one reply.
_FIND_SCRIPT = """
local found = {}
for i, bucket in ipairs(KEYS) do
  found[i] = redis.call('ZRANGEBYSCORE', bucket, ARGV[1], '+inf', 'WITHSCORES')
end
return found
"""


def _parse_member(raw: object) -> tuple[str, int] | None:
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if not isinstance(raw, str):
        return None
    key, _, fingerprint = raw.rpartition(":")
    if not key or not _HEX64.fullmatch(fingerprint):
        return None
    return key, int(fingerprint, 16)
