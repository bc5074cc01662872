"""OpenAI's moderation API (`POST /v1/moderations`) over guardstream's decisions.

Request: `input` (a string, an array of strings, or an array of `{"type": "text", "text"}`
parts), `model` (echoed, not used: the deployment's guard model judges). Each input is one
prompt-moderation post of the tenant named by the `X-Guardstream-Tenant` header (default
`default`). Response: `id`, `model`, and per input `flagged`, `categories`,
`category_scores` (docs/components/api.md has the table):

- `flagged` is true when the policy pack does not allow the post as it is (its action is
  `block` or `review`): unsafe content, and controversial content the pack holds.
- Qwen3Guard's categories map onto OpenAI's where one exists (`Violent` → `violence`,
  `Non-violent Illegal Acts` → `illicit`, `Sexual Content or Sexual Acts` → `sexual`,
  `Suicide & Self-Harm` → `self-harm`, `Unethical Acts` → `harassment` and `hate`); the
  others, and `controversial`, are guardstream's own keys (`guardstream/pii`, ...), beside
  OpenAI's, which a client that does not know them ignores.
- A category's score is the model's confidence in its label for a category it named, 1.0
  for a human's or a rule's verdict, 0.0 for a category not named.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

from guardstream.contracts.events import Action, ContractError, Decision, Verdict

OPENAI_CATEGORIES: tuple[str, ...] = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
CONTROVERSIAL = "guardstream/controversial"
ESCALATED = "guardstream/escalated"
# Qwen3Guard's category → the keys it sets (`contracts.labels.CATEGORIES`, in order).
CATEGORY_KEYS: dict[str, tuple[str, ...]] = {
    "Violent": ("violence",),
    "Non-violent Illegal Acts": ("illicit",),
    "Sexual Content or Sexual Acts": ("sexual",),
    "PII": ("guardstream/pii",),
    "Suicide & Self-Harm": ("self-harm",),
    "Unethical Acts": ("harassment", "hate"),
    "Politically Sensitive Topics": ("guardstream/political",),
    "Copyright Violation": ("guardstream/copyright",),
    "Jailbreak": ("guardstream/jailbreak",),
}
ALL_KEYS: tuple[str, ...] = (
    *OPENAI_CATEGORIES,
    *sorted({k for keys in CATEGORY_KEYS.values() for k in keys if k.startswith("guardstream/")}),
    CONTROVERSIAL,
    ESCALATED,
)

_TEXT = {key: ["text"] for key in ALL_KEYS}


class ModerationsRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI may add fields; they change nothing here

    input: str | list[str] | list[dict[str, str]]
    model: str | None = None


class ModerationResult(BaseModel):
    flagged: bool
    categories: dict[str, bool]
    category_scores: dict[str, float]
    category_applied_input_types: dict[str, list[str]]  # text only: every key, ["text"]


class ModerationsResponse(BaseModel):
    id: str
    model: str
    results: list[ModerationResult]


def inputs(body: object, limit: int) -> tuple[list[str], str | None]:
    """The texts of a moderations request and the model it names; `ContractError` with the
    contract's `invalid_schema` reason when it is not one."""
    if not isinstance(body, dict) or "input" not in body:
        raise ContractError("invalid_schema", "a moderations request is an object with `input`")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise ContractError("invalid_schema", "`model` is a string")
    given = body["input"]
    if isinstance(given, str):
        return [given], model
    if not isinstance(given, list) or not given:
        raise ContractError("invalid_schema", "`input` is a string or a non-empty array")
    if len(given) > limit:
        raise ContractError("invalid_schema", f"at most {limit} inputs")
    texts: list[str] = []
    for part in given:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict) and part.get("type") == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise ContractError("invalid_schema", "a text part's `text` is a string")
            texts.append(text)
        else:
            raise ContractError("invalid_schema", "only text inputs are moderated")
    return texts, model


def result(decision: Decision | None) -> ModerationResult:
    """One input's result; `None`: escalated, undecided yet (flagged: held)."""
    categories = dict.fromkeys(ALL_KEYS, False)
    scores = dict.fromkeys(ALL_KEYS, 0.0)
    if decision is None:
        categories[ESCALATED] = True
        return ModerationResult(
            flagged=True,
            categories=categories,
            category_scores=scores,
            category_applied_input_types=_TEXT,
        )
    score = decision.confidence if decision.confidence is not None else 1.0
    for name in decision.categories:
        for key in CATEGORY_KEYS.get(name, ()):
            categories[key] = True
            scores[key] = score
    if decision.verdict is Verdict.CONTROVERSIAL:
        categories[CONTROVERSIAL] = True
        scores[CONTROVERSIAL] = score
    return ModerationResult(
        flagged=decision.action is not Action.ALLOW,
        categories=categories,
        category_scores=scores,
        category_applied_input_types=_TEXT,
    )


def response(decisions: Sequence[Decision | None], model: str | None) -> ModerationsResponse:
    ids = "|".join(d.decision_id if d is not None else "escalated" for d in decisions)
    served = next((d.model for d in decisions if d is not None and d.model), "guardstream")
    return ModerationsResponse(
        id=f"modr-{hashlib.sha256(ids.encode()).hexdigest()[:24]}",
        model=model or served,
        results=[result(d) for d in decisions],
    )
