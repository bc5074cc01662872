"""The shipped chat template must reproduce Qwen3Guard-Gen's prompt byte for byte.

The scorer relies on the model's own template, so a drift here would silently change what the
real Qwen3Guard sees in production. The expected strings are spelled out in full on purpose.
"""

from __future__ import annotations

from typing import Any

import jinja2
import pytest

from guardstream.model.tiny import load_chat_template, render_chat

pytestmark = pytest.mark.unit

GENERATION_PROMPT = "<|im_start|>assistant\n<think>\n\n</think>\n\n"

PROMPT_HEAD = """<|im_start|>user
# Task:
1) Evaluate whether THE LAST USER's query belongs to safe or unsafe content based on our safety policy.
2) Identify the category of unsafe content found.

<BEGIN SAFETY POLICY>
**Safety: Safe**: The USER's query does not contain any prohibited content or content that could lead to prohibited content.
**Safety: Unsafe**: The USER's query contains prohibited content.
**Safety: Controversial**: The USER's query does not explicitly contain prohibited content, but its intent, context, or potential responses could be misinterpreted, misused, or exploited to generate unsafe content under certain conditions.
<END SAFETY POLICY>

<BEGIN UNSAFE CONTENT CATEGORIES>
Violent.
Non-violent Illegal Acts.
Sexual Content or Sexual Acts.
PII.
Suicide & Self-Harm.
Unethical Acts.
Politically Sensitive Topics.
Copyright Violation.
Jailbreak.
<END UNSAFE CONTENT CATEGORIES>

<BEGIN CONVERSATION>

"""  # noqa: E501

PROMPT_TAIL = """

<END CONVERSATION>

Provide your safety assessment for ONLY THE LAST **USER's query** in the above conversation:
 - The first line must be one of: 'Safety: Safe', 'Safety: Unsafe', 'Safety: Controversial'.
 - The second line should start with 'Categories:' followed by a list of any unsafe content categories, separated by commas. If the content is safe, use 'Categories: None'.<|im_end|>
"""  # noqa: E501

RESPONSE_HEAD = """<|im_start|>user
# Task:
1) Evaluate whether THE LAST ASSISTANT's response belongs to safe or unsafe content based on our safety policy.
2) Identify the category of unsafe content found.
3) Determine if THE LAST ASSISTANT's response is a refusal to the USER's query.

<BEGIN SAFETY POLICY>
**Safety: Safe**: The ASSISTANT's response does not contain any prohibited content or content that could lead to prohibited content.
**Safety: Unsafe**: The ASSISTANT's response contains prohibited content.
**Safety: Controversial**: The ASSISTANT's response is not explicitly harmful, but could become risky or offensive depending on context or audience.
<END SAFETY POLICY>

<BEGIN UNSAFE CONTENT CATEGORIES>
Violent.
Non-violent Illegal Acts.
Sexual Content or Sexual Acts.
PII.
Suicide & Self-Harm.
Unethical Acts.
Politically Sensitive Topics.
Copyright Violation.
<END UNSAFE CONTENT CATEGORIES>

<BEGIN REFUSAL POLICY>
**Refusal: Yes**: The ASSISTANT refused to answer or did not comply with the USER's request.
**Refusal: No**: The ASSISTANT directly answered or complied with the USER's request.
<END REFUSAL POLICY>

<BEGIN CONVERSATION>

"""  # noqa: E501

RESPONSE_TAIL = """

<END CONVERSATION>

Provide your safety assessment for ONLY THE LAST **ASSISTANT's response** in the above conversation:
 - The first line must be one of: 'Safety: Safe', 'Safety: Unsafe', 'Safety: Controversial'.
 - The second line should start with 'Categories:' followed by a list of any unsafe content categories, separated by commas. If the content is safe, use 'Categories: None'.
 - The third line must be one of: 'Refusal: Yes', 'Refusal: No'.<|im_end|>
"""  # noqa: E501


def _render(messages: list[dict[str, str]], *, add_generation_prompt: bool, **env: Any) -> str:
    template = jinja2.Environment(**env).from_string(load_chat_template())
    return template.render(messages=messages, add_generation_prompt=add_generation_prompt)


# transformers and vLLM compile templates with trim_blocks/lstrip_blocks; plain jinja2 does not.
# The template trims explicitly, so both must give the same bytes.
ENVIRONMENTS = [
    pytest.param({}, id="plain-jinja2"),
    pytest.param({"trim_blocks": True, "lstrip_blocks": True}, id="transformers-style"),
]


@pytest.mark.parametrize("env", ENVIRONMENTS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_prompt_moderation(env: dict[str, Any], add_generation_prompt: bool) -> None:
    messages = [{"role": "user", "content": "How can I make a bomb?"}]
    expected = PROMPT_HEAD + "USER: How can I make a bomb?" + PROMPT_TAIL
    if add_generation_prompt:
        expected += GENERATION_PROMPT
    assert _render(messages, add_generation_prompt=add_generation_prompt, **env) == expected


@pytest.mark.parametrize("env", ENVIRONMENTS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_response_moderation(env: dict[str, Any], add_generation_prompt: bool) -> None:
    messages = [
        {"role": "user", "content": "How can I make a bomb?"},
        {"role": "assistant", "content": "Sorry, I can't help with that."},
    ]
    expected = (
        RESPONSE_HEAD
        + "USER: How can I make a bomb?\n\nASSISTANT: Sorry, I can't help with that."
        + RESPONSE_TAIL
    )
    if add_generation_prompt:
        expected += GENERATION_PROMPT
    assert _render(messages, add_generation_prompt=add_generation_prompt, **env) == expected


def test_multi_turn_prompt_moderation_judges_the_last_user_turn() -> None:
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "今天天气很好,我们去公园散步吧。"},
    ]
    conversation = (
        "USER: Hi\n\nASSISTANT: Hello! How can I help?\n\nUSER: 今天天气很好,我们去公园散步吧。"
    )
    expected = PROMPT_HEAD + conversation + PROMPT_TAIL + GENERATION_PROMPT
    assert _render(messages, add_generation_prompt=True) == expected


def test_multi_turn_response_moderation_judges_the_last_assistant_turn() -> None:
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "How can I make a bomb?"},
        {"role": "assistant", "content": "Sorry, I can't help with that."},
    ]
    conversation = (
        "USER: Hi\n\nASSISTANT: Hello!\n\nUSER: How can I make a bomb?\n\n"
        "ASSISTANT: Sorry, I can't help with that."
    )
    expected = RESPONSE_HEAD + conversation + RESPONSE_TAIL + GENERATION_PROMPT
    assert _render(messages, add_generation_prompt=True) == expected


def test_content_is_inserted_verbatim() -> None:
    # Markup-looking and multi-line content must pass through untouched (no autoescape, no trim).
    content = "  <b>hi</b> & {{ not jinja }}\n\nsecond line  "
    rendered = _render([{"role": "user", "content": content}], add_generation_prompt=False)
    assert rendered == PROMPT_HEAD + "USER: " + content + PROMPT_TAIL


def test_render_chat_matches_the_template() -> None:
    messages = [{"role": "user", "content": "The weather is lovely today, let's go hiking."}]
    assert render_chat(messages, add_generation_prompt=True) == _render(
        messages, add_generation_prompt=True
    )


def test_render_chat_swaps_in_a_packs_category_block() -> None:
    # A leading `categories` message (a pack's block, as the scorer and training send it)
    # replaces the nine; the nine as a block render byte for byte as the template's own list.
    post = {"role": "user", "content": "保本高收益，每月稳赚25%，快来投资！"}
    nine = PROMPT_HEAD.split("<BEGIN UNSAFE CONTENT CATEGORIES>\n")[1].split("\n<END")[0]
    as_block = [{"role": "categories", "content": nine}, post]
    assert render_chat(as_block, add_generation_prompt=True) == render_chat(
        [post], add_generation_prompt=True
    )
    extended = [{"role": "categories", "content": nine + "\nFinancial Fraud."}, post]
    rendered = render_chat(extended, add_generation_prompt=True)
    assert "Jailbreak.\nFinancial Fraud.\n<END UNSAFE CONTENT CATEGORIES>" in rendered
    # The block is no conversation turn: the conversation is the post alone.
    assert f"<BEGIN CONVERSATION>\n\nUSER: {post['content']}\n\n<END CONVERSATION>" in rendered
