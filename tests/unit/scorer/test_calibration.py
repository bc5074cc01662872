"""Calibration report: reliability bins, ECE, slices, and lines that cannot be used."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from guardstream.cli import app
from guardstream.scorer.calibration import Labelled, load, reliability, slices

pytestmark = pytest.mark.unit


def item(
    confidence: float, correct: bool, lang: str = "en", cats: tuple[str, ...] = ()
) -> Labelled:
    return Labelled("unsafe", confidence, "unsafe" if correct else "safe", lang, cats)


def test_a_calibrated_model_has_zero_ece() -> None:
    # 0.75 confidence, 3 of 4 right; 0.25 confidence, 1 of 4 right.
    items = [item(0.75, i < 3) for i in range(4)] + [item(0.25, i < 1) for i in range(4)]
    result = reliability(items, bins=10)
    assert result.ece == pytest.approx(0.0)
    assert result.accuracy == pytest.approx(0.5)
    assert [b.count for b in result.bins] == [0, 0, 4, 0, 0, 0, 0, 4, 0, 0]


def test_ece_weights_each_bin_by_its_share() -> None:
    # Overconfident: 0.95 but half right (gap 0.45, 2 of 4 items) ; 0.55 and right (gap 0.45).
    items = [item(0.95, True), item(0.95, False), item(0.55, True), item(0.55, True)]
    result = reliability(items, bins=10)
    assert result.ece == pytest.approx(0.5 * 0.45 + 0.5 * 0.45)
    assert result.bins[9].accuracy == 0.5 and result.bins[9].confidence == pytest.approx(0.95)
    # 1.0 exactly lands in the last bin, 0.0 in the first.
    edge = reliability([item(1.0, True), item(0.0, False)], bins=10)
    assert edge.bins[9].count == 1 and edge.bins[0].count == 1 and edge.ece == 0.0


def test_slices_by_language_and_each_predicted_category() -> None:
    items = [
        item(0.9, True, "en", ("Violent", "PII")),
        item(0.9, False, "zh", ("PII",)),
        item(0.6, True, "zh"),
    ]
    got = {(kind, value): len(members) for kind, value, members in slices(items)}
    assert got == {
        ("lang", "en"): 1,
        ("lang", "zh"): 2,
        ("category", "PII"): 2,
        ("category", "Violent"): 1,
        ("category", "none"): 1,
    }


def write(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


GOOD = [
    orjson.dumps(
        {
            "pred_label": "Unsafe",
            "pred_confidence": 0.9,
            "human_label": "unsafe",
            "lang": "en",
            "pred_categories": ["Violent"],
        }
    ),
    orjson.dumps(
        {
            "verdict": "safe",
            "confidence": 0.8,
            "label": "unsafe",
            "lang": "zh",
            "categories": "PII, None",
        }
    ),
]
BAD = [
    b"{not json",
    orjson.dumps(["a list"]),
    orjson.dumps({"pred_label": "safe", "human_label": "safe"}),
    orjson.dumps({"pred_label": "safe", "pred_confidence": 1.5, "human_label": "safe"}),
    orjson.dumps({"pred_label": "safe", "pred_confidence": True, "human_label": "safe"}),
]


def test_unusable_lines_are_reported_by_number(tmp_path: Path) -> None:
    items, problems = load(write(tmp_path / "r.jsonl", GOOD + BAD))
    assert [i.correct for i in items] == [True, False]
    assert items[1].categories == ("PII",)
    assert [n for n, _ in problems] == [3, 4, 5, 6, 7]
    assert "confidence outside [0, 1]" in dict(problems)[6]


def test_the_calibrate_command_prints_tables_and_a_json_summary(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["calibrate", str(write(tmp_path / "r.jsonl", GOOD + BAD))])
    assert result.exit_code == 0, result.output
    assert "Reliability (2 items, 5 left out)" in result.output
    assert "line 3: not JSON (left out)" in result.output
    summary = orjson.loads(result.output[result.output.rindex("\n{\n") + 1 :])
    assert summary["items"] == 2 and summary["left_out"] == 5
    assert summary["slices"]["lang:zh"] == {"items": 1, "ece": 0.8}


def test_the_calibrate_command_refuses_a_file_without_usable_lines(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["calibrate", str(write(tmp_path / "r.jsonl", BAD))])
    assert result.exit_code == 2
    assert "no usable lines" in result.output
