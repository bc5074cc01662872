"""Personal data in free text replaced by typed placeholders (pure; `docs/components/feedback.md`).

`redact(text, kinds)` replaces e-mail addresses with `[EMAIL]`, URLs that carry credentials,
a query, a fragment or a token-like path segment with `[URL]`, Chinese resident ID numbers
(18 digits, checksum verified) and US social security numbers (`123-45-6789`, valid ranges)
with `[ID]`, payment card numbers (13-19 digits, a card network's leading digit, Luhn
verified) with `[CARD]`, and phone numbers valid for an international `+` prefix, China or the
US (Google's libphonenumber metadata, the `phonenumbers` package) with `[PHONE]`.

Precision: a number is only replaced when its checksum or numbering plan says it is one, so
prices, dates, order numbers and years stay. Digits are read in *runs* (digit groups joined by
one or two of ` ().-`); a card or a phone is a window of whole groups of a run, never part of a
group. Time: every pattern is linear (no nested quantifier can retry a character), and phone
parsing is budgeted per text: past `PHONE_BUDGET` parses the remaining runs of 7+ digits are
replaced unread (fail closed; only a hostile text has that many candidates).
`redact(redact(x)) == redact(x)`: placeholders hold no digit, `@` or `://`.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Collection, Iterator

import phonenumbers


class PiiKind(enum.StrEnum):
    EMAIL = "email"
    PHONE = "phone"
    ID = "id"
    CARD = "card"
    URL = "url"


ALL_KINDS: frozenset[PiiKind] = frozenset(PiiKind)
PLACEHOLDERS: dict[PiiKind, str] = {kind: f"[{kind.value.upper()}]" for kind in PiiKind}
PHONE_BUDGET = 2000  # phonenumbers.parse calls per text (about 20 µs each)
PHONE_REGIONS = (None, "CN", "US")  # None: only numbers written with `+` / `00` and a country

_URL = re.compile(r"(?i)(?:https?|ftp)://[^\s<>\"'\[\]{}|\\^`\x00-\x1f\x7f]+")
_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,}")
_EMAIL = re.compile(
    r"[A-Za-z0-9._%+-]{1,64}@"
    r"(?:[A-Za-z0-9-]{1,63}\.){1,8}[A-Za-z]{2,63}(?![A-Za-z-])"
)
_CN_ID = re.compile(
    r"(?<![0-9])[1-9][0-9]{5}(?:18|19|20)[0-9]{2}(?:0[1-9]|1[0-2])"
    r"(?:0[1-9]|[12][0-9]|3[01])[0-9]{3}(?:[0-9](?![0-9])|[Xx](?![A-Za-z]))"
)
_SSN = re.compile(r"(?<![0-9-])(?!000|666|9)[0-9]{3}-(?!00)[0-9]{2}-(?!0000)[0-9]{4}(?![0-9-])")
# A run: digit groups joined by one or two separators, optionally led by `+` and `(`. Linear:
# a group is all the digits there are (`[0-9]+` followed by a separator or the end).
_RUN = re.compile(r"\+?\(?[0-9]+(?:[ ().-]{1,2}[0-9]+)*")
_GROUP = re.compile(r"[0-9]+")
_DATE = re.compile(
    r"^(?:[0-9]{4}[-./ ][0-9]{1,2}[-./ ][0-9]{1,2}|[0-9]{1,2}[-./ ][0-9]{1,2}[-./ ][0-9]{2,4})$"
)
_CN_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CARD_MAX_GROUPS = 5  # 4-4-4-4-3 is the most a printed card number has
_PHONE_MAX_GROUPS = 6  # +33 1 23 45 67 89


def redact(text: str, kinds: Collection[PiiKind] = ALL_KINDS) -> str:
    """`text` with every detected item of `kinds` replaced by its placeholder."""
    wanted = frozenset(kinds)
    if PiiKind.URL in wanted:
        text = _URL.sub(_url, text)
    if PiiKind.EMAIL in wanted:
        text = _EMAIL.sub(PLACEHOLDERS[PiiKind.EMAIL], text)
    if PiiKind.ID in wanted:
        text = _CN_ID.sub(_cn_id, text)
        text = _SSN.sub(PLACEHOLDERS[PiiKind.ID], text)
    if PiiKind.CARD in wanted:
        text = _RUN.sub(lambda m: _card_windows(m.group()), text)
    if PiiKind.PHONE in wanted:
        budget = [PHONE_BUDGET]
        text = _RUN.sub(lambda m: _phones(m.group(), budget), text)
    return text


def _url(match: re.Match[str]) -> str:
    url = match.group()
    rest = url.split("://", 1)[1]
    authority, _, path = rest.partition("/")
    secret = (
        "@" in authority
        or "?" in rest
        or "#" in rest
        or any(_has_letter_and_digit(t) for t in _TOKEN.findall(path))
    )
    return PLACEHOLDERS[PiiKind.URL] if secret else url


def _has_letter_and_digit(token: str) -> bool:
    return any(c.isdigit() for c in token) and any(c.isalpha() for c in token)


def _cn_id(match: re.Match[str]) -> str:
    number = match.group().upper()
    total = sum(int(d) * w for d, w in zip(number, _CN_ID_WEIGHTS, strict=False))
    return PLACEHOLDERS[PiiKind.ID] if "10X98765432"[total % 11] == number[17] else number


def luhn_valid(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _is_card(window: str) -> bool:
    if any(sep not in " -" for sep in _GROUP.split(window)[1:-1]):
        return False  # a printed card number is grouped by spaces or hyphens only
    digits = "".join(_GROUP.findall(window))
    return 13 <= len(digits) <= 19 and digits[0] in "23456" and luhn_valid(digits)


def _groups(run: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in _GROUP.finditer(run)]


def _windows(
    run: str,
    accept: Callable[[str], bool],
    *,
    max_groups: int,
    digits: tuple[int, int],
    name: str,
) -> str:
    """`run` with its windows of whole groups that `accept` takes replaced, leftmost first and
    the longest at each start. Only windows of `digits` (min, max) digits are offered."""
    groups = _groups(run)
    counted = [0]  # counted[i]: digits in groups[:i]
    for start, end in groups:
        counted.append(counted[-1] + end - start)
    placeholder = f"[{name}]"
    out: list[str] = []
    done = 0  # run[:done] is in `out`
    index = 0
    while index < len(groups):
        found = None
        for last in range(min(len(groups), index + max_groups) - 1, index - 1, -1):
            if not digits[0] <= counted[last + 1] - counted[index] <= digits[1]:
                continue
            # A leading `+` or `(` belongs to the number it leads.
            start = 0 if index == 0 else groups[index][0]
            if accept(run[start : groups[last][1]]):
                found = (start, groups[last][1], last)
                break
        if found is None:
            index += 1
            continue
        out.append(run[done : found[0]])
        out.append(placeholder)
        done = found[1]
        index = found[2] + 1
    out.append(run[done:])
    return "".join(out)


def _card_windows(run: str) -> str:
    if len(run) < 13:
        return run
    return _windows(run, _is_card, max_groups=_CARD_MAX_GROUPS, digits=(13, 19), name="CARD")


def _phones(run: str, budget: list[int]) -> str:
    if len(run) < 7 or sum(c.isdigit() for c in run) < 7:
        return run
    if budget[0] <= 0:
        return PLACEHOLDERS[PiiKind.PHONE]  # fail closed: a hostile text, read no further

    def accept(window: str) -> bool:
        if _DATE.match(window):
            return False
        if budget[0] <= 0:
            return True  # fail closed
        return any(_valid_phone(window, region, budget) for region in _regions(window))

    return _windows(run, accept, max_groups=_PHONE_MAX_GROUPS, digits=(7, 15), name="PHONE")


def _regions(window: str) -> Iterator[str | None]:
    if window.startswith(("+", "00")):
        yield None
    else:
        yield from (r for r in PHONE_REGIONS if r is not None)


def _valid_phone(window: str, region: str | None, budget: list[int]) -> bool:
    budget[0] -= 1
    if region is None and window.startswith("00"):
        window = "+" + window[2:]
    try:
        number = phonenumbers.parse(window, region)
    except phonenumbers.NumberParseException:
        return False
    return bool(phonenumbers.is_valid_number(number))
