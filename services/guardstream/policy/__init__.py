"""Policy packs: per tenant (and region), how model verdicts become actions.

`pack` holds the model, `loader` reads YAML files into a `registry`, `routing` decides
(pure), and `prompt` renders what a pack adds to the model input. File format:
`schemas/policy-pack.v1.json`; examples: `policies/`.
"""

from guardstream.policy.loader import PolicyLoadError, Problem, load_packs, parse_pack_file
from guardstream.policy.pack import (
    ControversialMode,
    PolicyPack,
    ReviewBelow,
    ScorerUnavailableMode,
)
from guardstream.policy.prompt import apply_prefix, prompt_fingerprint, prompt_prefix
from guardstream.policy.registry import Clash, PolicyConflictError, PolicyRegistry
from guardstream.policy.routing import (
    ReviewSla,
    Routed,
    review_sla,
    route,
    route_scorer_unavailable,
)

__all__ = [
    "Clash",
    "ControversialMode",
    "PolicyConflictError",
    "PolicyLoadError",
    "PolicyPack",
    "PolicyRegistry",
    "Problem",
    "ReviewBelow",
    "ReviewSla",
    "Routed",
    "ScorerUnavailableMode",
    "apply_prefix",
    "load_packs",
    "parse_pack_file",
    "prompt_fingerprint",
    "prompt_prefix",
    "review_sla",
    "route",
    "route_scorer_unavailable",
]
