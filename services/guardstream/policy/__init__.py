"""Policy packs: per tenant (and region), how model verdicts become actions.

`pack` holds the model, `loader` reads YAML files into a `registry` (kept in step with its
directory by `reloader`), `routing` decides (pure), and `prompt` renders what a pack adds to
the model input. File format:
`schemas/policy-pack.v1.json`; the shipped packs and examples: `policy/packs/`.
"""

from pathlib import Path

from guardstream.policy.loader import (
    PolicyLoadError,
    Problem,
    load_packs,
    parse_pack_file,
    read_pack_text,
)
from guardstream.policy.pack import (
    ControversialMode,
    PolicyPack,
    ReviewBelow,
    ScorerUnavailableMode,
)
from guardstream.policy.prompt import (
    apply_prefix,
    category_block,
    pack_categories,
    prompt_fingerprint,
    prompt_prefix,
    region_name,
)
from guardstream.policy.registry import Clash, PolicyConflictError, PolicyRegistry
from guardstream.policy.reloader import (
    PACKS_DIR,
    PackReloader,
    Reload,
    ReloadOutcome,
    load_watched,
    pack_digest,
)
from guardstream.policy.routing import (
    ReviewSla,
    Routed,
    review_sla,
    route,
    route_scorer_unavailable,
)

__all__ = [
    "PACKS_DIR",
    "Clash",
    "ControversialMode",
    "PackReloader",
    "PolicyConflictError",
    "PolicyLoadError",
    "PolicyPack",
    "PolicyRegistry",
    "Problem",
    "Reload",
    "ReloadOutcome",
    "ReviewBelow",
    "ReviewSla",
    "Routed",
    "ScorerUnavailableMode",
    "apply_prefix",
    "category_block",
    "load_packs",
    "load_registry",
    "load_watched",
    "pack_categories",
    "pack_digest",
    "parse_pack_file",
    "prompt_fingerprint",
    "prompt_prefix",
    "read_pack_text",
    "region_name",
    "review_sla",
    "route",
    "route_scorer_unavailable",
]


def load_registry(directory: Path | None) -> PolicyRegistry:
    """The packs in `directory`, or the ones shipped with guardstream when it is None."""
    return load_packs(directory or PACKS_DIR)
