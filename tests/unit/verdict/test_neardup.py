import hashlib
import os
import random
import subprocess
import sys
from statistics import mean

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from guardstream.contracts.text import normalise
from guardstream.verdict.neardup import (
    DEFAULT_THRESHOLD,
    FINGERPRINT_VERSION,
    _distinct,
    band_count,
    bands,
    digits,
    fingerprints,
    hamming,
    shingle_size,
    signal,
    signal_length,
    simhash64,
)

pytestmark = pytest.mark.unit

U64 = st.integers(min_value=0, max_value=2**64 - 1)
WORDS = (
    "meet you at the park after school tomorrow bring tickets free giveaway follow and dm me "
    "winners tonight honestly the new update is terrible my sister bought a laptop for cheap "
    "does anyone know where to buy fresh strawberries in boston lost my dog near the station"
).split()
HANZI = "我明天在公园见你记得带演唱会门票今天京东的手机打折手慢无有人知道成都哪里能买到新鲜草莓吗"

EN_POST = "Meet me at the park tomorrow and bring the concert tickets, we leave right after school."
ZH_POST = "明天公园门口见，记得带演唱会门票，放学以后我们直接出发，别迟到了。"


def random_post(rng: random.Random, words: int) -> str:
    if rng.random() < 0.5:
        return " ".join(rng.choice(WORDS) for _ in range(words))
    return "".join(rng.choice(HANZI) for _ in range(words))


def one_edit(rng: random.Random, text: str) -> str:
    """Replaces one letter with a different one: the smallest change the signal can see."""
    positions = [i for i, ch in enumerate(text) if ch.isalpha()]
    i = rng.choice(positions)
    alphabet = HANZI if "\u4e00" <= text[i] <= "\u9fff" else "abcdefghijklmnopqrstuvwxyz"
    new = rng.choice([c for c in alphabet if c != text[i].lower()])
    return text[:i] + new + text[i + 1 :]


# --- fingerprint ---------------------------------------------------------------------------


@given(st.text())
def test_equal_texts_have_equal_fingerprints(text: str) -> None:
    assert simhash64(text) == simhash64(str(text))
    assert 0 <= simhash64(text) < 2**64


def test_fingerprints_do_not_depend_on_the_process() -> None:
    """Python's own hash() is salted per process; the stored fingerprints must not be."""
    texts = [EN_POST, ZH_POST, "x" * 5000]
    code = (
        "import sys; from guardstream.verdict.neardup import simhash64; "
        "print(*(simhash64(t) for t in sys.argv[1:]))"
    )
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", code, *texts], env=env, capture_output=True, check=True
        )
        assert [int(x) for x in out.stdout.split()] == [simhash64(t) for t in texts]


def test_fingerprint_is_pinned() -> None:
    # Stored index entries outlive deploys: a change here orphans them, so make it on purpose.
    # Version 2 (numpy, polynomial hash modulo two primes); the version is in bucket keys.
    assert FINGERPRINT_VERSION == 2
    assert simhash64(EN_POST) == 16819129696113187370
    assert simhash64(ZH_POST) == 5269624351328660018


def _simhash_one_text_at_a_time(sig: str) -> int:
    """The definition `fingerprints` computes in numpy passes over many texts, in plain ints."""
    if not sig:
        return 0
    size = shingle_size(len(sig))
    codes = [0] * (size - 1) + [ord(ch) for ch in sig] + [0] * (size - 1)
    features = set()
    for start in range(len(codes) - size + 1):
        halves = []
        for prime in (2_147_483_647, 2_147_483_629):
            h = 0
            for code in codes[start : start + size]:
                h = (h * 1_000_003 + code) % prime
            halves.append(h)
        x = halves[0] << 32 | halves[1]
        mask = (1 << 64) - 1
        x ^= x >> 30
        x = x * 0xBF58476D1CE4E5B9 & mask
        x ^= x >> 27
        x = x * 0x94D049BB133111EB & mask
        features.add(x ^ x >> 31)
    return sum(
        1 << bit for bit in range(64) if 2 * sum(f >> bit & 1 for f in features) > len(features)
    )


@given(st.lists(st.text(max_size=300), max_size=12))
def test_batched_fingerprints_follow_the_definition(texts: list[str]) -> None:
    signals = [signal(t) for t in texts]
    assert fingerprints(signals) == [_simhash_one_text_at_a_time(s) for s in signals]


def test_fingerprints_of_a_fixed_corpus_are_pinned() -> None:
    # Any faster way of computing fingerprints must give these very values (the index keeps
    # them across deploys): 420 texts of 1-3,000 words or ideographs, 400 of them up to 600.
    rng = random.Random(20261126)
    texts = [random_post(rng, rng.randint(1, 600)) for _ in range(400)]
    texts += [random_post(rng, rng.randint(600, 3000)) for _ in range(20)]
    prints = fingerprints([signal(t) for t in texts])
    digest = hashlib.sha256(",".join(map(str, prints)).encode()).hexdigest()
    assert digest == "51821383de579d2a4a7c8c93cfc0aa9740305cc9c76d78e1ada8bbb23e5023d7"


def test_features_are_a_set_per_text_even_when_low_bits_collide() -> None:
    low = 0x0000_1234_5678_9ABC
    features = np.array([low, 1 << 60 | low, low, 7, 7, low], np.uint64)
    owner = np.array([0, 0, 0, 0, 1, 1], np.int64)
    kept, kept_owner = _distinct(features, owner)
    assert kept.tolist() == [low, 1 << 60 | low, 7, 7, low]
    assert kept_owner.tolist() == [0, 0, 0, 1, 1]


def test_repetition_does_not_drown_a_changed_word() -> None:
    padding = "lol " * 60  # 3 distinct shingles; counted per occurrence they would decide
    hug, kill = simhash64(padding + "i will hug you"), simhash64(padding + "i will kill you")
    assert hamming(hug, kill) > 10


def test_fingerprints_of_a_batch_do_not_depend_on_its_chunks() -> None:
    rng = random.Random(3)
    texts = [random_post(rng, rng.randint(1, 3000)) for _ in range(60)]  # several chunks
    signals = [signal(t) for t in texts]
    assert fingerprints(signals) == [fingerprints([s])[0] for s in signals]
    assert fingerprints(signals[:5]) == [_simhash_one_text_at_a_time(s) for s in signals[:5]]


@pytest.mark.parametrize(
    "variant",
    [
        EN_POST.upper(),
        EN_POST.replace(",", "").replace(".", "!!!"),
        EN_POST + " 😂🔥💯",
        EN_POST.replace("park", "park 👉"),
        EN_POST + " https://bit.ly/3xYz9Q",
        EN_POST + " www.example.com/free?x=1",
        EN_POST.replace(" ", "   ").replace("tickets", "tic kets"),
        "M\u200bE\u200bET " + EN_POST[5:],  # zero-width characters alone are normalised away
        "ＭＥＥＴ" + EN_POST[4:],  # so are full-width letters
    ],
)
def test_trivial_english_variants_keep_the_fingerprint(variant: str) -> None:
    assert normalise(variant) != normalise(EN_POST)
    assert simhash64(normalise(variant)) == simhash64(normalise(EN_POST))


@pytest.mark.parametrize(
    "variant",
    [
        ZH_POST.replace("，", "！").replace("。", "～～"),
        ZH_POST + "😡😡",
        ZH_POST + " http://t.cn/A6xYz",
        " ".join(ZH_POST),  # 加 微 信: spaced-out characters
        ZH_POST.replace("，", ", "),
        "\u200d".join(ZH_POST[:6]) + ZH_POST[6:],
    ],
)
def test_trivial_chinese_variants_keep_the_fingerprint(variant: str) -> None:
    assert simhash64(normalise(variant)) == simhash64(normalise(ZH_POST))


def test_one_changed_word_changes_the_fingerprint() -> None:
    hurt = EN_POST.replace("Meet", "Hurt")
    assert simhash64(hurt) != simhash64(EN_POST)
    assert hamming(simhash64(hurt), simhash64(EN_POST)) > DEFAULT_THRESHOLD
    hit = ZH_POST.replace("见", "打")
    assert hamming(simhash64(hit), simhash64(ZH_POST)) > DEFAULT_THRESHOLD


def test_small_edits_give_small_distances_and_unrelated_texts_large_ones() -> None:
    rng = random.Random(20240611)
    edited, unrelated = [], []
    for _ in range(300):
        text = random_post(rng, rng.randint(8, 80))
        edited.append(hamming(simhash64(text), simhash64(one_edit(rng, text))))
        other = random_post(rng, rng.randint(8, 80))
        unrelated.append(hamming(simhash64(text), simhash64(other)))
    # One edit changes ~1/9 of the features (~10 of 64 bits); unrelated texts differ in ~32.
    assert 7 < mean(edited) < 13
    assert 28 < mean(unrelated) < 36
    edited.sort()
    unrelated.sort()
    assert edited[int(0.95 * len(edited))] < unrelated[int(0.05 * len(unrelated))]


def test_one_edit_moves_the_fingerprint_about_as_far_at_any_length() -> None:
    """Fixed-size shingles would let a long post hide a changed word; sized ones do not."""
    rng = random.Random(7)
    by_length = {}
    for words in (10, 60, 400):
        distances = []
        for _ in range(150):
            text = " ".join(rng.choice(WORDS) for _ in range(words))
            distances.append(hamming(simhash64(text), simhash64(one_edit(rng, text))))
        by_length[words] = mean(distances)
    assert all(7 < d < 13 for d in by_length.values()), by_length
    assert max(by_length.values()) - min(by_length.values()) < 2, by_length


def test_empty_signal_has_fingerprint_zero() -> None:
    assert simhash64("") == 0
    assert simhash64("🔥🔥 !!! ...") == 0


@pytest.mark.parametrize(
    ("length", "size"), [(1, 4), (24, 4), (32, 4), (33, 5), (400, 50), (65536, 8192)]
)
def test_shingles_grow_with_the_text(length: int, size: int) -> None:
    assert shingle_size(length) == size


# --- signal and digits ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello, WORLD!! 🎉", "helloworld"),
        ("see https://bit.ly/x?y=1 and www.a.com/b or t.co/abc now", "seeandornow"),
        ("我觉得，女生学不好编程。", "我觉得女生学不好编程"),
        ("Straße", "strasse"),
        ("नमस्ते", "नमस्ते"),  # combining vowel signs are kept
        ("$500 = 5×100", "5005100"),
    ],
)
def test_signal_examples(text: str, expected: str) -> None:
    assert signal(text) == expected


def test_digits_ignore_separators_and_links() -> None:
    assert digits("meet at 5, room 12 https://t.co/99") == "512"
    assert digits("call 1 0 0") == digits("call 100") == "100"
    assert digits("no numbers") == ""


def test_signal_length_counts_ideographs_twice() -> None:
    assert signal_length("hello, world") == 10
    assert signal_length("我觉得，女生") == 10
    assert signal_length("ok 好") == 4


@given(st.text())
def test_signal_is_stable_under_normalise(text: str) -> None:
    assert signal(normalise(text)) == signal(normalise(normalise(text)))


# --- hamming and bands ------------------------------------------------------------------------


@given(U64, U64, U64)
def test_hamming_is_a_metric(a: int, b: int, c: int) -> None:
    assert hamming(a, a) == 0
    assert hamming(a, b) == hamming(b, a) == bin(a ^ b).count("1")
    assert (hamming(a, b) == 0) == (a == b)
    assert hamming(a, c) <= hamming(a, b) + hamming(b, c)


@given(U64, st.integers(min_value=0, max_value=63))
def test_hamming_counts_one_flipped_bit(a: int, bit: int) -> None:
    assert hamming(a, a ^ (1 << bit)) == 1


@given(U64, st.integers(min_value=1, max_value=64))
def test_bands_cover_the_fingerprint_exactly(fingerprint: int, count: int) -> None:
    parts = bands(fingerprint, count)
    widths = [64 // count + (1 if i < 64 % count else 0) for i in range(count)]
    assert len(parts) == count
    assert sum(widths) == 64
    rebuilt, shift = 0, 0
    for part, width in zip(parts, widths, strict=True):
        assert 0 <= part < 2**width
        rebuilt |= part << shift
        shift += width
    assert rebuilt == fingerprint


@given(
    U64,
    st.integers(min_value=0, max_value=8).flatmap(
        lambda t: st.tuples(
            st.just(t), st.lists(st.integers(0, 63), unique=True, min_size=0, max_size=t)
        )
    ),
)
def test_fingerprints_within_the_threshold_share_a_band(
    fingerprint: int, threshold_and_flips: tuple[int, list[int]]
) -> None:
    threshold, flips = threshold_and_flips
    other = fingerprint
    for bit in flips:
        other ^= 1 << bit
    assert hamming(fingerprint, other) <= threshold
    count = band_count(threshold)
    assert any(a == b for a, b in zip(bands(fingerprint, count), bands(other, count), strict=True))


@given(U64, st.integers(min_value=0, max_value=8))
def test_band_count_is_the_pigeonhole_minimum(fingerprint: int, threshold: int) -> None:
    count = band_count(threshold)
    assert count == threshold + 1
    # With one band fewer, flipping one bit in each band leaves none shared.
    if count > 1:
        fewer = count - 1
        other = fingerprint
        start = 0
        for i in range(fewer):
            other ^= 1 << start
            start += 64 // fewer + (1 if i < 64 % fewer else 0)
        assert hamming(fingerprint, other) == fewer <= threshold
        assert all(
            a != b for a, b in zip(bands(fingerprint, fewer), bands(other, fewer), strict=True)
        )
