import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from guardstream.contracts.redaction import (
    ALL_KINDS,
    PHONE_BUDGET,
    PiiKind,
    luhn_valid,
    redact,
)

pytestmark = pytest.mark.unit

CARDS = ["4111 1111 1111 1111", "5555-5555-5555-4444", "378282246310005", "6212345678901232"]
EMAILS = ["zhang.san@example.com.cn", "bob+tag@mail.example.org", "X_Y%z@sub-d.io"]
PHONES = ["13800138000", "+86 138 0013 8000", "(415) 253-0000", "+1 415 253 0000", "010 6552 9988"]
IDS = ["11010519491231002X", "123-45-6789"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            "联系我：13800138000，或者邮箱 zhang.san@example.com.cn",
            "联系我：[PHONE]，或者邮箱 [EMAIL]",
        ),
        ("Call (415) 253-0000 or +1 415 253 0000 today", "Call [PHONE] or [PHONE] today"),
        ("身份证号 11010519491231002X 谢谢", "身份证号 [ID] 谢谢"),
        ("身份证号 110105194912310021 校验位不对", "身份证号 110105194912310021 校验位不对"),
        ("card 4111 1111 1111 1111 exp 12/25", "card [CARD] exp 12/25"),
        ("卡号4111111111111111，有效期 2025-12", "卡号[CARD]，有效期 2025-12"),
        ("not a card: 4111 1111 1111 1112", "not a card: 4111 1111 1111 1112"),  # Luhn fails
        ("ssn 123-45-6789, not 000-12-3456", "ssn [ID], not 000-12-3456"),
        (
            "reset: https://example.com/reset?token=abc123 docs: https://example.com/about",
            "reset: [URL] docs: https://example.com/about",
        ),
        ("https://user:pw@example.com/x", "[URL]"),
        ("https://t.co/Ab3dEf9hIjKlMnOpQr12 hi", "[URL] hi"),
        ("+33 1 23 45 67 89 ou 0044 20 7946 0958", "[PHONE] ou [PHONE]"),
        # Ordinary numbers, dates, prices and times stay.
        ("订单号 2024011512345678，价格 12000000 元，日期 2024-01-15", None),
        ("On 12/25/2025 at 10:30 we sold 1,234,567 units for $99.99 (v1.2.3)", None),
        ("population 331449281, year 2024, pi 3.14159265358979", None),
        ("2024年1月15日 下午3点 第1234567号", None),
    ],
)
def test_examples(raw: str, expected: str | None) -> None:
    assert redact(raw) == (raw if expected is None else expected)


def test_kinds_select_what_is_replaced() -> None:
    text = "mail a@b.com phone 13800138000 card 4111111111111111"
    assert redact(text, {PiiKind.EMAIL}) == "mail [EMAIL] phone 13800138000 card 4111111111111111"
    assert redact(text, {PiiKind.PHONE, PiiKind.CARD}) == "mail a@b.com phone [PHONE] card [CARD]"
    assert redact(text, ()) == text


def test_luhn() -> None:
    assert all(luhn_valid(re.sub(r"\D", "", card)) for card in CARDS)
    assert not luhn_valid("4111111111111112")


def test_phone_budget_fails_closed() -> None:
    # More candidates than the parse budget: the rest is replaced unread, never kept.
    text = " x ".join(["13800138000"] * (PHONE_BUDGET + 10))
    out = redact(text, {PiiKind.PHONE})
    assert not re.search(r"[0-9]", out)


pii = st.sampled_from(CARDS + EMAILS + PHONES + IDS)
noise = st.text(
    alphabet=st.sampled_from(list("0123456789 +-().@/:?=#abcxyz你好\x00\ud800\n"))
    | st.characters(),
    max_size=40,
)


@given(st.lists(st.one_of(pii, noise), max_size=12).map("".join))
@example("4111 1111 1111 1111 5")
@example("+86 138 0013 8000 1")
@example("a@b.co@c.com")
@example("X_Y%z@sub-d.io4111111111111111")
@example("11010519491231002X11010519491231002X")
@example("+86 138 0013 8000https://a.io/?x=1")
@example("https://x.io/?a=1 a@b.com 13800138000")
def test_idempotent(text: str) -> None:
    once = redact(text)
    assert redact(once) == once


@given(pii, noise, noise)
@example(CARDS[0], "", "")
@example(EMAILS[0], "联系", "谢谢")
@example(PHONES[0], "电话", "。")
def test_detected_pii_never_survives(item: str, before: str, after: str) -> None:
    # Surrounded by a separator the item is whole: it must be gone from the output.
    text = f"{before} {item} {after}"
    assert item not in redact(text)


@given(st.text())
def test_without_candidates_text_is_unchanged(text: str) -> None:
    plain = re.sub(r"[0-9@:]", "", text)
    assert redact(plain) == plain


HOSTILE = [
    "1 " * 500_000,
    "12 34 " * 170_000,
    "+1" * 500_000,
    "a@" * 500_000,
    "a." * 500_000 + "@x",
    "http://" * 150_000,
    "\x00\ud800" * 500_000,
]


@pytest.mark.parametrize("text", HOSTILE, ids=[repr(t[:8]) for t in HOSTILE])
def test_megabyte_hostile_input_ends(text: str) -> None:
    # Catastrophic backtracking would take hours: pytest's timeout (300 s) is the bound; each
    # case takes about a second. Output never grows past a placeholder per character.
    assert len(redact(text)) <= len(text) * 7


@settings(max_examples=5, deadline=None)
@given(st.text(min_size=1, max_size=8))
def test_repeated_hostile_pattern_ends(unit: str) -> None:
    text = unit * (200_000 // len(unit))
    assert len(redact(text)) <= len(text) * 7


@pytest.mark.parametrize("kind", sorted(ALL_KINDS))
def test_placeholders_hold_nothing_detectable(kind: PiiKind) -> None:
    placeholder = f"[{kind.value.upper()}]"
    assert redact(placeholder * 3) == placeholder * 3
