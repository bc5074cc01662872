"""Scenario 15: the versioned adversarial corpus through the real pipeline (broker, Redis, triage,
scorer, vLLM serving the tiny checkpoint), judged per post by `guardstream.devtools.adversarial`.

The checks are independent of the code under test (they re-render what the engine was given
and look at token ids and code points); the second test shows they catch what they must.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from guardstream.contracts.events import Kind, Verdict
from guardstream.devtools.adversarial import (
    Outcome,
    assess,
    load_corpus,
    load_tokenizer,
    render_budget,
    run_corpus,
    summarise,
)
from guardstream.model.tiny import ensure_tiny_checkpoint
from guardstream.runtime.settings import Settings
from guardstream.scorer.engine import RawAnswer
from guardstream.scorer.vllm_engine import VllmGuardEngine
from tests.support.oracle import assert_invariants, collect

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


async def test_every_attack_keeps_the_prompt_structure_and_gets_one_decision(
    settings: Settings, engine: VllmGuardEngine
) -> None:
    settings = settings.replace(policy={"near_duplicates": False})
    corpus = load_corpus()
    outcomes = await run_corpus(settings, engine, corpus, timeout_s=600)
    assess(outcomes, load_tokenizer(settings), render_budget(settings))

    failed = {o.attack.id: o.problems for o in outcomes if o.problems}
    assert not failed, failed
    for o in outcomes:
        # Every property an entry exists to exercise was actually checked, and held.
        assert all(o.checks.get(prop) is True for prop in o.attack.expect), (o.attack.id, o.checks)
        assert o.checks["structure"] and o.checks["one_decision"]
        assert o.answer is not None and o.seen is not None
        if o.answer.text and o.verdict is Verdict.SAFE:
            assert "Safe" in o.answer.text, "safe without the model saying so"
    summary = summarise(corpus, outcomes, engine.model_id)
    assert summary["all_passed"] and summary["posts"] == len(corpus.attacks)
    assert {"injection", "template", "invisible", "homoglyph", "padding", "multilingual"} <= set(
        summary["families"]
    )
    # The same run judged by the suite's oracle: nothing missing, nothing doubled, no DLQ.
    verdicts = await collect(settings)
    assert_invariants(verdicts, {f"adv-{a.id}" for a in corpus.attacks}, max_emissions_per_post=1)


def outcome(attack_id: str, seen: list[dict[str, str]], *, truncated: bool = False) -> Outcome:
    attack = next(a for a in load_corpus().attacks if a.id == attack_id)
    return Outcome(
        attack=attack,
        decisions=1,
        dlq=0,
        verdict=Verdict.CONTROVERSIAL,
        source="model",
        seen=seen,
        answer=RawAnswer(text="garbage", truncated=truncated),
    )


def test_the_checks_catch_forged_tokens_invisibles_and_a_lost_tail(model_cache_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ensure_tiny_checkpoint(model_cache_dir))
    corpus = {a.id: a for a in load_corpus().attacks}
    control = outcome("control-en", [{"role": "user", "content": corpus["control-en"].text}])
    # What the model would see if neutralising, normalising or head+tail cutting were skipped.
    forged = outcome("tpl-im-turns", [{"role": "user", "content": corpus["tpl-im-turns"].text}])
    hidden = outcome("inv-zero-width", [{"role": "user", "content": corpus["inv-zero-width"].text}])
    padded = outcome(
        "pad-en",
        [{"role": "user", "content": corpus["pad-en"].text[:20_000]}],
        truncated=True,
    )
    wrong = outcome("control-zh", [{"role": "user", "content": corpus["control-zh"].text}])
    wrong.answer = RawAnswer(text="Safety: Safe\nCategories: None")  # yet decided controversial
    baselines = assess([control, forged, hidden, padded, wrong], tokenizer, 1900)

    assert baselines[Kind.PROMPT] and control.passed, control.problems
    assert forged.checks["structure"] is False
    assert hidden.checks["invisible_removed"] is False and hidden.checks["folded"] is False
    assert padded.checks["head_and_tail"] is False
    assert wrong.checks["verdict_from_answer"] is False


def test_the_delimiter_check_catches_a_forged_block_and_passes_the_neutralised_one(
    model_cache_dir: Path,
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ensure_tiny_checkpoint(model_cache_dir))
    corpus = {a.id: a for a in load_corpus().attacks}
    control = outcome("control-en", [{"role": "user", "content": corpus["control-en"].text}])
    delimiter_ids = [
        i for i, a in corpus.items() if a.family == "delimiter" and a.kind is Kind.PROMPT
    ]
    raw = [outcome(i, [{"role": "user", "content": corpus[i].text}]) for i in delimiter_ids]
    neutral = [outcome(i, messages_for_text(corpus[i].text)) for i in delimiter_ids]
    assess([control, *raw], tokenizer, 1900)  # one outcome per attack id and call
    assess([control, *neutral], tokenizer, 1900)
    assert control.checks["delimiters"]
    assert not [o.attack.id for o in raw if o.checks["delimiters"]]  # every forgery is seen
    assert all(o.checks["delimiters"] for o in neutral), [o.problems for o in neutral]


# Added tokens of the real Qwen3 tokenizer that carry no `<|…|>` pipes. A tokenizer matches
# every added token inside plain text, so user text containing one changes the prompt's
# structure unless `neutralise` breaks it up. The tiny checkpoint's vocabulary lacks them.
QWEN3_PIPELESS_ADDED = ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")


def test_qwen3_tool_tags_in_user_text_do_not_become_tokens(model_cache_dir: Path) -> None:
    from transformers import AutoTokenizer

    from guardstream.scorer.prompt import PromptRenderer

    tokenizer = AutoTokenizer.from_pretrained(ensure_tiny_checkpoint(model_cache_dir))
    tokenizer.add_tokens(list(QWEN3_PIPELESS_ADDED))  # the real tokenizer's vocabulary
    corpus = {a.id: a for a in load_corpus().attacks}
    control = outcome("control-en", [{"role": "user", "content": corpus["control-en"].text}])
    attacks = [
        outcome(attack_id, messages_for_text(corpus[attack_id].text))
        for attack_id in ("tpl-tool-call", "tpl-tool-response")
    ]
    assess([control, *attacks], tokenizer, 1900)
    PromptRenderer(tokenizer, 1900)  # the renderer accepts the extended tokenizer
    assert all(a.checks["structure"] for a in attacks), [a.problems for a in attacks]


def messages_for_text(text: str) -> list[dict[str, str]]:
    """The scorer's conversation for a prompt post (`messages_for`, the public entry point)."""
    from guardstream.contracts.events import ScoreRequest, utcnow
    from guardstream.scorer.prompt import messages_for

    request = ScoreRequest(
        event_id="e",
        produced_at=utcnow(),
        post_id="p",
        post_event_id="e",
        tenant="t",
        kind=Kind.PROMPT,
        text=text,
        content_key="0" * 32,
        policy="p",
        received_at=utcnow(),
    )
    return messages_for(request)
