"""Pack rules: first match wins, the safety rules hold whatever a pack says, bad rules are
refused at load with the file and line, and the shipped example packs decide as documented."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import ValidationError

from guardstream.contracts.events import Action, AuthorHistory, Verdict
from guardstream.contracts.labels import CATEGORIES
from guardstream.contracts.topics import ACTION_TOPICS, Topic
from guardstream.policy import PACKS_DIR, PolicyLoadError, PolicyPack, load_packs, route
from guardstream.policy.lint import lint, lint_file, lint_text
from guardstream.policy.rules import PUBLISHING, Rule
from guardstream.verdict.decisions import ACTION_TOPIC

pytestmark = pytest.mark.unit

S, C, U = Verdict.SAFE, Verdict.CONTROVERSIAL, Verdict.UNSAFE
FRAUD = "Non-violent Illegal Acts"
CLEAN = AuthorHistory()
REPEAT = AuthorHistory(confirmed_unsafe_7d=3, confirmed_unsafe_30d=3, unsafe_30d=4)
HEAD = 'id: t\nversion: "1"\ntenants: ["*"]\n'


def pack(*rules: dict[str, Any], **fields: Any) -> PolicyPack:
    return PolicyPack.model_validate(
        {"id": "t", "version": "1", "tenants": ["*"], "rules": list(rules), **fields}
    )


def test_first_matching_rule_decides_and_is_recorded() -> None:
    p = pack(
        {
            "id": "repeat",
            "verdict": "unsafe",
            "author": {"confirmed_unsafe_7d": {"at_least": 3}},
            "action": "remove",
        },
        {"id": "fraud", "verdict": "unsafe", "categories": [FRAUD], "action": "block"},
        {
            "id": "soft",
            "verdict": ["controversial"],
            "confidence": {"at_least": 0.8},
            "action": "limit",
        },
    )
    routed = route(p, U, 0.95, [FRAUD], REPEAT)
    assert (routed.action, routed.rule) == (Action.REMOVE, "rule:repeat")
    assert "confirmed_unsafe_7d=3" in routed.explanation
    assert route(p, U, 0.95, [FRAUD], CLEAN).rule == "rule:fraud"
    assert route(p, C, 0.85, [], CLEAN).action is Action.LIMIT
    # No rule matches: the built-in rules decide, as for a pack without rules.
    assert route(p, C, 0.5, [], CLEAN) == route(pack(), C, 0.5, [], CLEAN)
    assert route(p, S, 0.9, [], CLEAN).rule == "verdict"


def test_author_rules_skip_when_the_history_could_not_be_read() -> None:
    p = pack(
        {
            "id": "clean",
            "verdict": "controversial",
            "confidence": {"at_least": 0.5},
            "author": {"unsafe_30d": {"below": 1}},
            "action": "warn",
        }
    )
    assert route(p, C, 0.9, [], CLEAN).action is Action.WARN
    assert route(p, C, 0.9, [], None).rule == "controversial:review"  # never guessed


def test_confidence_bands_are_half_open() -> None:
    p = pack(
        {
            "id": "mid",
            "verdict": "unsafe",
            "confidence": {"at_least": 0.5, "below": 0.8},
            "action": "hold",
        }
    )
    assert route(p, U, 0.5, []).action is Action.HOLD
    assert route(p, U, 0.8, []).action is Action.BLOCK
    assert route(p, U, None, []).rule == "no_confidence:unsafe"


publishing_rule = st.fixed_dictionaries(
    {
        "id": st.just("r"),
        "action": st.sampled_from([a.value for a in PUBLISHING]),
        "verdict": st.sampled_from(["safe", "controversial", ["safe", "controversial"]]),
    },
    optional={
        "categories": st.lists(st.sampled_from(CATEGORIES), min_size=1, max_size=3, unique=True),
        "author": st.just({"unsafe_7d": {"below": 5}}),
    },
)


@given(
    rule=publishing_rule,
    verdict=st.sampled_from([S, C, U]),
    confidence=st.none() | st.just(math.nan) | st.just(1.5),
    categories=st.lists(st.sampled_from(CATEGORIES), max_size=3),
)
@example(
    rule={"id": "r", "action": "allow", "verdict": "controversial"},
    verdict=C,
    confidence=None,
    categories=[],
)
def test_no_rule_publishes_a_non_safe_verdict_without_a_usable_confidence(
    rule: dict[str, Any], verdict: Verdict, confidence: float | None, categories: list[str]
) -> None:
    routed = route(pack(rule), verdict, confidence, categories, CLEAN)
    if verdict is not S:
        assert routed.action not in PUBLISHING


@pytest.mark.parametrize(
    ("rules", "path", "message", "line"),
    [
        (
            "  - id: a\n    categories: [Fraud]\n    action: block\n",
            "rules.0.categories.0",
            "unknown category 'Fraud'",
            6,
        ),
        (
            "  - id: a\n    categories: [pii]\n    action: block\n",
            "rules.0.categories.0",
            "did you mean 'PII'?",
            6,
        ),
        ("  - id: a\n    action: ban\n", "rules.0.action", "Input should be", 6),
        (
            "  - id: a\n    verdikt: unsafe\n    action: block\n",
            "rules.0.verdikt",
            "did you mean 'verdict'",
            6,
        ),
        (
            "  - id: a\n    author: {spam_7d: {at_least: 1}}\n    action: block\n",
            "rules.0.author.spam_7d",
            "Input should be",
            6,
        ),
        (
            "  - id: a\n    confidence: {at_least: 0.9, below: 0.5}\n    action: block\n",
            "rules.0.confidence",
            "can never fire",
            6,
        ),
        (
            "  - id: a\n    author: {unsafe_7d: {below: 0}}\n    action: block\n",
            "rules.0.author.unsafe_7d",
            "can never fire",
            6,
        ),
        (
            "  - id: all\n    action: hold\n  - id: later\n    verdict: unsafe\n    action: block\n",  # noqa: E501
            "rules.1",
            "rule 0 ('all') matches everything it matches",
            7,
        ),
        (
            "  - id: fraud\n    categories: [PII, Violent]\n    action: block\n"
            "  - id: pii\n    verdict: unsafe\n    categories: [PII]\n"
            "    confidence: {at_least: 0.9}\n    action: remove\n",
            "rules.1",
            "can never fire",
            8,
        ),
        ("  - id: a\n    action: limit\n", "rules.0.action", "publishes the post", 6),
        (
            "  - id: a\n    verdict: safe\n    action: allow\n  - id: a\n    action: block\n",
            "rules.1.id",
            "'a' is rule 0's id too",
            8,
        ),
    ],
)
def test_bad_rules_are_refused_with_file_field_and_line(
    rules: str, path: str, message: str, line: int
) -> None:
    problems = lint_text("acme.yaml", f"{HEAD}rules:\n{rules}")
    assert [p.field for p in problems] == [path], problems
    assert message in problems[0].message
    assert problems[0].line == line
    assert str(problems[0]).startswith(f"acme.yaml: {path}: ")
    assert str(problems[0]).endswith(f"(line {line})")


def test_narrower_later_rules_and_other_actions_are_not_shadowed() -> None:
    assert not lint_text(
        "ok.yaml",
        HEAD
        + "rules:\n"
        + "  - id: strong\n    verdict: unsafe\n    confidence: {at_least: 0.9}\n    action: block\n"  # noqa: E501
        + "  - id: weak\n    verdict: unsafe\n    action: hold\n"
        + "  - id: soft\n    verdict: controversial\n    confidence: {at_least: 0.8}\n"
        + "    action: warn\n"
        # Without a confidence condition this one still fires for unparseable output.
        + "  - id: rest\n    verdict: controversial\n    action: hold\n",
    )


def test_a_field_problem_names_its_line_in_a_multi_document_file(tmp_path: Path) -> None:
    write = tmp_path / "acme.yaml"
    write.write_text(f'{HEAD}---\nid: u\nversion: "1"\ntenants: [u]\ncache_ttl_s: -1\n')
    (problem,) = lint_file(write)
    assert (problem.source, problem.field, problem.line) == (
        "acme.yaml (document 2)",
        "cache_ttl_s",
        8,
    )


def test_lint_checks_directories_as_a_whole_and_names_missing_paths(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text('id: a\nversion: "1"\ntenants: [a]\n')
    problems = lint([tmp_path, tmp_path / "absent.yaml"])
    assert [p.message.split(":")[0] for p in problems] == [
        "no default pack",
        "no such file or directory",
    ]
    assert lint([PACKS_DIR]) == []
    with pytest.raises(PolicyLoadError, match=r"rules\.0\.action: .*\(line 6\)"):
        (tmp_path / "default.yaml").write_text(
            f"{HEAD.replace('t', 'default', 1)}rules:\n  - id: x\n    action: nope\n"
        )
        load_packs(tmp_path)


def test_every_action_has_a_topic_and_only_hold_shares_review() -> None:
    assert set(ACTION_TOPIC) == set(Action)
    assert set(ACTION_TOPIC.values()) == set(ACTION_TOPICS)
    assert ACTION_TOPIC[Action.HOLD] is Topic.REVIEW
    shared = [a for a, t in ACTION_TOPIC.items() if list(ACTION_TOPIC.values()).count(t) > 1]
    assert sorted(shared) == sorted([Action.REVIEW, Action.HOLD])


# --- the shipped example packs, as docs/concepts/policy-rules.md tells them -----------------


def test_the_example_packs_load_and_validate_against_the_schema() -> None:
    registry = load_packs(PACKS_DIR)
    for name in ("example-finance.yaml", "example-education.yaml"):
        document = yaml.safe_load((PACKS_DIR / name).read_text(encoding="utf-8"))
        assert PolicyPack.model_validate(document).uses_author_history
    assert registry.for_post("finance-platform", None).id == "finance-platform"
    assert registry.for_post("edu-platform", "CN").id == "education-platform"


@pytest.mark.parametrize(
    ("verdict", "confidence", "categories", "history", "action", "rule"),
    [
        (U, 0.95, [FRAUD], CLEAN, Action.BLOCK, "rule:fraud-block"),
        (U, 0.60, [FRAUD], CLEAN, Action.HOLD, "rule:fraud-unsure-hold"),
        (C, None, ["Unethical Acts"], CLEAN, Action.HOLD, "rule:fraud-unsure-hold"),
        (U, 0.95, [FRAUD], REPEAT, Action.REMOVE, "rule:repeat-offender-remove"),
        (C, 0.90, [], CLEAN, Action.WARN, "rule:borderline-first-time-warn"),
        (C, 0.90, [], REPEAT, Action.REMOVE, "rule:repeat-offender-remove"),
        (C, 0.90, [], AuthorHistory(unsafe_30d=2), Action.LIMIT, "rule:borderline-limit"),
        (C, 0.50, [], CLEAN, Action.REVIEW, "controversial:review"),
        (S, 0.99, [], REPEAT, Action.ALLOW, "verdict"),
    ],
)
def test_the_financial_platform_pack(
    verdict: Verdict,
    confidence: float | None,
    categories: list[str],
    history: AuthorHistory,
    action: Action,
    rule: str,
) -> None:
    finance = load_packs(PACKS_DIR).for_post("finance-platform", None)
    routed = route(finance, verdict, confidence, categories, history)
    assert (routed.action, routed.rule) == (action, rule)


@pytest.mark.parametrize(
    ("verdict", "confidence", "categories", "history", "action", "rule"),
    [
        (U, 0.90, ["Unethical Acts"], CLEAN, Action.BLOCK, "rule:cheating-service-block"),
        (U, 0.90, ["Unethical Acts"], REPEAT, Action.REMOVE, "rule:cheating-seller-remove"),
        (C, 0.60, ["Unethical Acts"], CLEAN, Action.HOLD, "rule:cheating-unsure-hold"),
        (C, 0.80, [], CLEAN, Action.WARN, "rule:homework-borderline-warn"),
        (
            C,
            0.80,
            [],
            AuthorHistory(controversial_7d=3),
            Action.LIMIT,
            "rule:homework-borderline-limit",
        ),
        (U, 0.50, ["Violent"], CLEAN, Action.REVIEW, "low_confidence:unsafe<0.70"),
    ],
)
def test_the_education_platform_pack(
    verdict: Verdict,
    confidence: float | None,
    categories: list[str],
    history: AuthorHistory,
    action: Action,
    rule: str,
) -> None:
    edu = load_packs(PACKS_DIR).for_post("edu-platform", None)
    routed = route(edu, verdict, confidence, categories, history)
    assert (routed.action, routed.rule) == (action, rule)


def test_rules_are_tried_in_order_and_a_rule_model_is_frozen() -> None:
    rule = Rule.model_validate({"id": "x", "action": "hold"})
    with pytest.raises(ValueError, match="frozen"):
        rule.id = "y"  # type: ignore[misc]
    assert rule.ref == "rule:x"


# --- hostile pack files: every input is a problem report or a pack, never a crash ---------

hostile_text = st.text(
    alphabet=st.characters(codec="utf-8") | st.sampled_from(["\x00", "\ud800", "\u202e", "："]),
    max_size=40,
)
hostile_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | hostile_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(hostile_text, inner, max_size=3),
    max_leaves=8,
)
rule_fields = st.sampled_from(
    ["id", "verdict", "categories", "confidence", "author", "action", "description", "x"]
)


@given(rules=st.lists(st.dictionaries(rule_fields, hostile_value, max_size=6), max_size=4))
@example(rules=[{"id": "a\x00", "action": "hold"}])
@example(rules=[{"id": "a", "action": "hold", "confidence": {"at_least": math.nan}}])
@example(rules=[{"id": "a", "action": "hold", "author": {"unsafe_7d": {"at_least": 10**30}}}])
def test_any_rules_document_loads_or_is_refused_with_lines(rules: list[Any]) -> None:
    text = yaml.safe_dump({"id": "t", "version": "1", "tenants": ["*"], "rules": rules})
    problems = lint_text("h.yaml", text)
    for problem in problems:
        assert problem.source == "h.yaml"
        assert problem.line is not None and 1 <= problem.line <= text.count("\n") + 1


@given(text=hostile_text)
@example(text="rules: [")
@example(text="rules:\n  - id: a\n    action: hold\n  - id: a\n    action: hold\n")
def test_any_text_is_a_problem_report_never_a_crash(text: str) -> None:
    problems = lint_text("h.yaml", text)
    assert all(str(p).startswith("h.yaml") for p in problems)


SCHEMA = jsonschema.Draft202012Validator(
    json.loads((Path(__file__).parents[3] / "schemas" / "policy-pack.v1.json").read_text())
)
BASE = {"id": "t", "version": "1", "tenants": ["*"]}


@pytest.mark.parametrize(
    "rule",
    [
        {"id": "a", "action": "ban"},
        {"id": "a"},
        {"action": "block"},
        {"id": "A B", "action": "block"},
        {"id": "a", "action": "block", "verdikt": "unsafe"},
        {"id": "a", "action": "block", "verdict": []},
        {"id": "a", "action": "block", "verdict": "maybe"},
        {"id": "a", "action": "block", "confidence": {}},
        {"id": "a", "action": "block", "confidence": {"at_least": 1.5}},
        {"id": "a", "action": "block", "author": {"spam_7d": {"at_least": 1}}},
        {"id": "a", "action": "block", "author": {"unsafe_7d": {"at_least": -1}}},
        {"id": "a", "action": "block", "author": {}},
    ],
)
def test_schema_and_model_refuse_the_same_malformed_rules(rule: dict[str, Any]) -> None:
    document = {**BASE, "rules": [rule]}
    assert not SCHEMA.is_valid(document)
    with pytest.raises(ValidationError):
        PolicyPack.model_validate(document)


def test_schema_and_model_accept_the_documented_rule() -> None:
    document = {
        **BASE,
        "rules": [
            {
                "id": "repeat-offender-remove",
                "description": "three confirmed in a week",
                "verdict": ["unsafe", "controversial"],
                "categories": ["Unethical Acts"],
                "confidence": {"at_least": 0.8},
                "author": {"confirmed_unsafe_7d": {"at_least": 3}},
                "action": "remove",
            }
        ],
    }
    SCHEMA.validate(document)
    assert PolicyPack.model_validate(document).rules[0].action is Action.REMOVE
