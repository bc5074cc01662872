"""The webhook receiver's signature check exactly as docs/components/api.md shows it: the
first `python` block of its "Decision callbacks" section, run as written, so the tests check
deliveries with what a tenant copies and the docs cannot drift from the signer."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

DOCS = Path(__file__).parents[2] / "docs/components/api.md"

Verifier = Callable[..., bool]


def documented_verifier() -> Verifier:
    text = DOCS.read_text(encoding="utf-8")
    section = text.split("## Decision callbacks", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)[:1]
    assert len(code.strip().splitlines()) <= 12, "the docs promise a short snippet"
    scope: dict[str, object] = {}
    exec(compile(code, str(DOCS), "exec"), scope)
    verified = scope["verified"]
    assert callable(verified)
    return verified  # type: ignore[return-value]
