"""The README stays a front door and its links lead somewhere; the Reference pages' generator
(docs/hooks/reference.py) documents every setting, nested sections included. `make lint` builds
the whole site with `mkdocs build --strict`; these are the checks that need no build."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType
from typing import Annotated, Literal

import pytest
from pydantic import AliasChoices, BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

pytestmark = pytest.mark.unit

ROOT = Path(__file__).parents[2]
README = ROOT / "README.md"
MAX_README_LINES = 150

# [text](target "title") and [label]: target
INLINE_LINK = re.compile(r"\[[^\]]*\]\(\s*(?:<([^>\n]+)>|([^)\s]+))(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)


def relative_targets(markdown: str) -> list[str]:
    """Link targets that name a file of the repository (no scheme, no bare #anchor)."""
    # Code (fenced or inline) holds no links, only text that may look like one.
    text = re.sub(r"```.*?```", "", markdown, flags=re.DOTALL)
    text = re.sub(r"`[^`\n]*`", "", text)
    targets = [a or b for a, b in INLINE_LINK.findall(text)] + REFERENCE_LINK.findall(text)
    return [
        target
        for target in targets
        if not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) and not target.startswith("#")
    ]


def test_readme_is_a_front_door() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, (
        f"README.md has {len(lines)} lines (at most {MAX_README_LINES}): move the text to docs/"
    )


def test_every_relative_link_in_the_readme_exists() -> None:
    targets = relative_targets(README.read_text(encoding="utf-8"))
    assert targets, "the README links into the docs"
    missing = [
        target
        for target in targets
        if not (README.parent / target.partition("#")[0].partition("?")[0]).exists()
    ]
    assert not missing, f"README.md links to files that do not exist: {missing}"


def test_relative_targets_are_what_a_reader_would_follow() -> None:
    markdown = (
        "[a](docs/a.md) [b](docs/b.md#part) [web](https://example.com) [top](#run-it)\n"
        '[c](<docs/c d.md>) [d](docs/d.md "title") `[not](a-link.md)`\n'
        "```\n[nor](this.md)\n```\n[ref]: docs/e.md\n[mail]: mailto:x@example.com\n"
    )
    assert relative_targets(markdown) == [
        "docs/a.md",
        "docs/b.md#part",
        "docs/c d.md",
        "docs/d.md",
        "docs/e.md",
    ]


def test_ci_runs_the_test_command_the_readme_gives() -> None:
    readme = README.read_text(encoding="utf-8")
    test_it = readme.partition("## Test it")[2].partition("\n## ")[0]
    assert "```bash\nmake test\n```" in test_it
    assert re.search(r"^make test$", (ROOT / ".ci" / "run").read_text(), re.MULTILINE)


def load_hook() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "docs_reference_hook", ROOT / "docs/hooks/reference.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Limits(BaseModel):
    """How much one batch may hold."""

    # Records per batch.
    batch_max: Annotated[int, Field(ge=1, validation_alias=AliasChoices("GS_BATCH_MAX"))] = 500
    in_flight: int = Field(default=5000, description="Unfinished records before pausing.")


class _Kafka(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KAFKA_")

    # Broker list.
    bootstrap: str = "127.0.0.1:9092"
    password: SecretStr | None = None
    limits: _Limits = _Limits()


class _Root(BaseSettings):
    # --- naming ---
    # Prefix of topics and groups.
    namespace: Annotated[str, Field(validation_alias=AliasChoices("GUARDSTREAM_NAMESPACE"))] = ""
    mode: Literal["two_phase", "plain"] = "two_phase"
    kafka: _Kafka = _Kafka()


def test_the_configuration_page_walks_nested_sections_with_their_own_env_names() -> None:
    hook = load_hook()
    page = "\n".join(hook._settings_section(_Root, (), _Root, level=2))

    assert "## Naming" in page
    assert "| `GUARDSTREAM_NAMESPACE` | text | empty | Prefix of topics and groups. |" in page
    # No alias: the default prefix.
    assert "`GUARDSTREAM_MODE` | `two_phase` or `plain` | `two_phase`" in page
    # A BaseSettings section reads its own prefix; a section inside it, its fields' aliases.
    assert "## `kafka`" in page and "### `kafka › limits`" in page
    assert "| `KAFKA_BOOTSTRAP` | text | `127.0.0.1:9092` | Broker list. |" in page
    assert "| `KAFKA_PASSWORD` | secret (optional) | unset |" in page
    assert "How much one batch may hold." in page
    assert "| `GS_BATCH_MAX` | int, ≥ 1 | `500` | Records per batch. |" in page
    assert "Unfinished records before pausing." in page


def test_nested_sections_under_a_delimiter_get_its_env_names() -> None:
    class Section(BaseModel):
        tick_s: float = 1.0

    class Root(BaseSettings):
        model_config = SettingsConfigDict(env_prefix="GS_", env_nested_delimiter="__")
        sla: Section = Section()

    page = "\n".join(load_hook()._settings_section(Root, (), Root, level=2))
    assert "| `GS_SLA__TICK_S` | float | `1.0` |" in page
