"""MkDocs hook: the Reference pages, generated from the code at every build so they cannot drift.

- `reference/configuration.md` from the pydantic-settings model: every field with its env
  name(s), type, constraints, default and description (the field's `description`, else the
  comment lines right above it in the class). Nested sections (a field whose type is a
  pydantic model) are walked recursively, each under its own heading with its own env names.
- `reference/cli.md` from the typer app, through `typer.main.get_command`: every command and
  group, recursively, with its help, usage and options as `--help` shows them.
- `reference/contracts.md` from `schemas/*.json` (one section per schema: title, description,
  fields, types, required) and the topic catalogue.

Pages are added in `on_files`, so `nav` may name them and `--strict` checks links to them.
The code is imported from this checkout's `services/`, whatever else is installed.
"""

from __future__ import annotations

import ast
import enum
import html
import importlib
import inspect
import json
import sys
import textwrap
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

# Where the generated pages read from (module:attribute).
SETTINGS = "guardstream.runtime.settings:Settings"
CLI_APP = "guardstream.cli:app"
TOPICS = "guardstream.contracts.topics:CATALOGUE"
SCHEMAS = "schemas"
# Env names of settings without an alias of their own (pydantic-settings' env_prefix wins).
ENV_PREFIX = "GUARDSTREAM_"

PAGES = {
    "reference/configuration.md": "configuration",
    "reference/cli.md": "cli",
    "reference/contracts.md": "contracts",
}


def on_files(files: Files, config: MkDocsConfig) -> Files:
    root = Path(config.config_file_path).parent
    services = str(root / "services")
    if services not in sys.path:
        sys.path.insert(0, services)
    builders = {
        "configuration": configuration_page,
        "cli": cli_page,
        "contracts": lambda: contracts_page(root / SCHEMAS),
    }
    for uri, kind in PAGES.items():
        files.append(File.generated(config, uri, content=builders[kind]()))
    return files


def _load(spec: str) -> Any:
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def _banner(source: str) -> str:
    return (
        f"*Generated from {source} at every build (`docs/hooks/reference.py`): "
        "to change this page, change the code.*\n\n"
    )


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("\n", " ").replace("|", "\\|")


def _code(text: str) -> str:
    """`text` as an inline code span, whatever backticks it holds."""
    fence = "``" if "`" in text else "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


# --- configuration -----------------------------------------------------------------------


def configuration_page() -> str:
    from pydantic import BaseModel

    settings: type[BaseModel] = _load(SETTINGS)
    lines = [
        "# Configuration",
        "",
        _banner(f"`{SETTINGS.replace(':', '.')}`").rstrip(),
        "",
        "Every setting comes from the environment, then from the env file (`.env` in the "
        "working directory, or the file `GUARDSTREAM_ENV_FILE` names; empty: none; `make up` "
        "writes it), and nowhere else; the environment wins. `guardstream settings` prints "
        "each one with its env name and current value, secrets masked, and where they came "
        "from; `guardstream doctor` checks that the addresses answer. Values are validated at "
        "start-up: a process with an invalid setting, or a `GUARDSTREAM_*` name no setting "
        "has, exits 2 naming it.",
        "",
    ]
    lines += _settings_section(settings, (), settings, level=2)
    return "\n".join(lines) + "\n"


def _settings_section(
    model: type[Any], path: tuple[str, ...], root: type[Any], level: int
) -> list[str]:
    from pydantic import BaseModel

    comments = _field_comments(model)
    out: list[str] = []
    rows: list[str] = []
    group = ""

    def flush() -> None:
        if rows:
            out.extend(["| env | type | default | meaning |", "|---|---|---|---|", *rows, ""])
            rows.clear()

    for name, field in model.model_fields.items():
        nested = _nested_model(field.annotation)
        heading, comment = comments.get(name, ("", ""))
        if heading and heading != group and nested is None:
            flush()
            group = heading
            out += [f"{'#' * level} {heading[:1].upper() + heading[1:]}", ""]
        if nested is not None and issubclass(nested, BaseModel):
            flush()
            title = " › ".join((*path, name))
            out += [f"{'#' * level} `{title}`", ""]
            about = field.description or comment or inspect.getdoc(nested) or ""
            if about:
                out += [about, ""]
            out += _settings_section(nested, (*path, name), root, level + 1)
            continue
        envs = _env_names(name, field, path, model, root)
        rows.append(
            "| "
            + " | ".join(
                [
                    "<br>".join(_code(env) for env in envs),
                    _cell(_type_name(field.annotation) + _constraints(field.metadata)),
                    _cell(_default(field)),
                    _cell(field.description or comment or ""),
                ]
            )
            + " |"
        )
    flush()
    return out


def _nested_model(annotation: Any) -> type[Any] | None:
    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _field_comments(model: type[Any]) -> dict[str, tuple[str, str]]:
    """Per field: the `# --- heading ---` it sits under and the comment lines right above it."""
    found: dict[str, tuple[str, str]] = {}
    for cls in reversed(model.__mro__):
        try:
            source = textwrap.dedent(inspect.getsource(cls))
        except (OSError, TypeError):
            continue
        lines = source.splitlines()
        tree = ast.parse(source)
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        heading = ""
        scanned = 0
        for node in body:
            if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
                continue
            start = node.lineno - 1  # 0-based index of the field's first line
            for line in lines[scanned:start]:
                title = _heading(line)
                if title is not None:
                    heading = title
            scanned = node.end_lineno or node.lineno
            above: list[str] = []
            index = start - 1
            while index >= 0 and lines[index].strip().startswith("#"):
                if _heading(lines[index]) is not None:
                    break
                above.append(lines[index].strip().lstrip("#").strip())
                index -= 1
            found[node.target.id] = (heading, " ".join(reversed(above)))
    return found


def _heading(line: str) -> str | None:
    text = line.strip()
    if text.startswith("# ---"):
        return text.strip("#").strip().strip("-").strip()
    return None


def _env_names(
    name: str, field: Any, path: tuple[str, ...], model: type[Any], root: type[Any]
) -> list[str]:
    from pydantic import AliasChoices, AliasPath

    alias = field.validation_alias or field.alias
    if isinstance(alias, str):
        return [alias]
    if isinstance(alias, AliasChoices):
        return [c for c in alias.choices if isinstance(c, str)] + [
            ".".join(map(str, c.path)) for c in alias.choices if isinstance(c, AliasPath)
        ]
    config = getattr(model, "model_config", {})
    prefix = config.get("env_prefix") or ""
    if path and not prefix:
        delimiter = getattr(root, "model_config", {}).get("env_nested_delimiter")
        if delimiter:
            root_prefix = getattr(root, "model_config", {}).get("env_prefix") or ""
            return [(root_prefix + delimiter.join((*path, name))).upper()]
    return [((prefix or ENV_PREFIX) + name).upper()]


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is typing.Literal:
        return " or ".join(_code(str(a.value if isinstance(a, enum.Enum) else a)) for a in args)
    if origin in (typing.Union, types.UnionType):
        kept = [a for a in args if a is not type(None)]
        text = " or ".join(_type_name(a) for a in kept)
        return f"{text} (optional)" if len(kept) < len(args) else text
    if origin is not None:
        inner = ", ".join(_type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if isinstance(annotation, type):
        if issubclass(annotation, enum.Enum):
            return " or ".join(_code(str(m.value)) for m in annotation)
        names = {"SecretStr": "secret", "Path": "path", "str": "text", "bool": "true/false"}
        return names.get(annotation.__name__, annotation.__name__)
    return str(annotation)


def _constraints(metadata: list[Any]) -> str:
    marks = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
    parts = []
    for item in metadata:
        for attr, mark in marks.items():
            value = getattr(item, attr, None)
            if value is not None:
                parts.append(f"{mark} {value}")
        pattern = getattr(item, "pattern", None)
        if pattern:
            parts.append(f"matching {_code(pattern)}")
    return f", {', '.join(parts)}" if parts else ""


def _default(field: Any) -> str:
    from pydantic import SecretStr
    from pydantic_core import PydanticUndefined

    if field.default_factory is not None:
        return "(computed)"
    value = field.default
    if value is PydanticUndefined:
        return "required"
    if value is None:
        return "unset"
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, Path):
        home = str(Path.home())
        text = str(value)
        value = "~" + text[len(home) :] if text.startswith(home) else text
    if isinstance(value, bool):
        value = str(value).lower()
    if isinstance(value, str) and "://" in value:
        settings_module = importlib.import_module(SETTINGS.partition(":")[0])
        value = settings_module.mask_url(value)
    return _code(str(value)) if str(value) != "" else "empty"


# --- CLI -------------------------------------------------------------------------------------


def cli_page() -> str:
    import typer

    command = typer.main.get_command(_load(CLI_APP))
    lines = [
        "# Command line",
        "",
        _banner(f"the typer app `{CLI_APP.replace(':', '.')}`").rstrip(),
        "",
        "Every process and tool is a subcommand of `guardstream` (installed with the project; "
        "`.venv/bin/guardstream` after `make install`). Settings come from the environment: see "
        "[Configuration](configuration.md).",
        "",
    ]
    context = command.context_class(command, info_name="guardstream")
    for path, cmd, ctx in _walk(command, context, ("guardstream",)):
        lines += _command_section(path, cmd, ctx)
    return "\n".join(lines) + "\n"


def _walk(
    command: Any, ctx: Any, path: tuple[str, ...]
) -> Iterator[tuple[tuple[str, ...], Any, Any]]:
    yield path, command, ctx
    if hasattr(command, "list_commands"):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is None or getattr(sub, "hidden", False):
                continue
            yield from _walk(sub, sub.context_class(sub, info_name=name, parent=ctx), (*path, name))


def _command_section(path: tuple[str, ...], command: Any, ctx: Any) -> list[str]:
    level = min(len(path) + 1, 6)
    out = [f"{'#' * level} `{' '.join(path)}`", ""]
    help_text = inspect.cleandoc(command.help or "").replace("\b\n", "")
    if help_text:
        out += [_escape_html(help_text), ""]
    usage = command.get_usage(ctx).removeprefix("Usage: ")
    out += ["```text", usage, "```", ""]
    options = []
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None or param.name == "help":
            continue
        opts, text = record
        options.append(f"- {_code(opts)}" + (f": {_escape_html(text)}" if text else ""))
    if options:
        out += [*options, ""]
    if hasattr(command, "list_commands"):
        subs = [
            name
            for name in command.list_commands(ctx)
            if not getattr(command.get_command(ctx, name), "hidden", False)
        ]
        if subs:
            out += ["Subcommands: " + ", ".join(_code(f"{' '.join(path)} {s}") for s in subs), ""]
    return out


def _escape_html(text: str) -> str:
    """Help text as Markdown: angle brackets shown, not read as HTML; code spans kept."""
    parts = text.split("`")
    return "`".join(p if i % 2 else html.escape(p, quote=False) for i, p in enumerate(parts))


# --- contracts -------------------------------------------------------------------------------


def contracts_page(schemas: Path) -> str:
    lines = [
        "# Contracts",
        "",
        _banner("`schemas/*.json` and the topic catalogue").rstrip(),
        "",
        "`schemas/` holds the JSON Schemas (2020-12) of every event: they are the source of "
        "truth, and the Python models are tested against them with the same valid and invalid "
        'examples. Every event has an envelope (`schema_version` "MAJOR.MINOR", `event_id`, '
        "`produced_at`); unknown fields are tolerated where a schema allows them, and an "
        "unknown major version goes to the DLQ as `unsupported_schema_version`. What every "
        "string field may hold is decided once: see [Security](../security.md).",
        "",
        "## Topics",
        "",
        "`guardstream topics list` prints the same catalogue; `guardstream topics create` "
        "creates it (idempotent).",
        "",
        "| topic | partitions | key | retention | carries |",
        "|---|---|---|---|---|",
    ]
    for spec in _load(TOPICS):
        days = spec.retention_ms / 86_400_000
        lines.append(
            f"| `{spec.topic.value}` | {spec.partitions} | {spec.key} | "
            f"{days:g} d | {_cell(spec.purpose)} |"
        )
    lines.append("")
    for path in sorted(schemas.glob("*.json")):
        lines += _schema_section(path)
    return "\n".join(lines) + "\n"


def _schema_section(path: Path) -> list[str]:
    schema = json.loads(path.read_text(encoding="utf-8"))
    title = schema.get("title", path.stem)
    out = [f"## {title}", "", f"`schemas/{path.name}`", ""]
    if schema.get("description"):
        out += [_escape_html(schema["description"]), ""]
    out += ["| field | type | required | meaning |", "|---|---|---|---|"]
    out += list(_schema_rows(schema, ""))
    out.append("")
    if schema.get("additionalProperties") is False:
        out += ["No other fields are accepted.", ""]
    rules = {k: schema[k] for k in ("if", "then", "else", "allOf", "anyOf", "oneOf") if k in schema}
    if rules:
        out += [
            "Conditional rules:",
            "",
            "```json",
            json.dumps(rules, indent=2, ensure_ascii=False),
            "```",
            "",
        ]
    for name, definition in schema.get("$defs", {}).items():
        out += [f"`{name}` ($defs): {_cell(_schema_type(definition))}", ""]
    return out


def _schema_rows(schema: dict[str, Any], prefix: str) -> Iterator[str]:
    required = set(schema.get("required", []))
    for name, prop in schema.get("properties", {}).items():
        full = f"{prefix}{name}"
        yield (
            f"| `{full}` | {_cell(_schema_type(prop))} | {'yes' if name in required else ''} | "
            f"{_cell(_escape_html(prop.get('description', '')))} |"
        )
        if isinstance(prop, dict) and "properties" in prop:
            yield from _schema_rows(prop, f"{full}.")
        items = prop.get("items") if isinstance(prop, dict) else None
        if isinstance(items, dict) and "properties" in items:
            yield from _schema_rows(items, f"{full}[].")


def _schema_type(prop: Any) -> str:
    if not isinstance(prop, dict):
        return _code(json.dumps(prop, ensure_ascii=False))
    if "$ref" in prop:
        return _code(prop["$ref"].rpartition("/")[2])
    if "const" in prop:
        return "exactly " + _code(json.dumps(prop["const"], ensure_ascii=False))
    if "enum" in prop:
        return "one of " + ", ".join(_code(json.dumps(v, ensure_ascii=False)) for v in prop["enum"])
    for key in ("oneOf", "anyOf"):
        if key in prop:
            return " or ".join(_schema_type(p) for p in prop[key])
    kind = prop.get("type", "any")
    text = " or ".join(kind) if isinstance(kind, list) else str(kind)
    if text == "array" and "items" in prop:
        text = f"array of {_schema_type(prop['items'])}"
    notes = []
    if "format" in prop:
        notes.append(prop["format"])
    for key, word in (
        ("minLength", "≥ {} chars"),
        ("maxLength", "≤ {} chars"),
        ("minimum", "≥ {}"),
        ("exclusiveMinimum", "> {}"),
        ("maximum", "≤ {}"),
        ("exclusiveMaximum", "< {}"),
        ("minItems", "≥ {} items"),
        ("maxItems", "≤ {} items"),
    ):
        if key in prop:
            notes.append(word.format(prop[key]))
    if "pattern" in prop and "format" not in prop:
        notes.append("matching " + _code(prop["pattern"]))
    if isinstance(prop.get("not"), dict) and "pattern" in prop["not"]:
        notes.append("no forbidden characters")
    if prop.get("uniqueItems"):
        notes.append("unique")
    if "default" in prop:
        notes.append("default " + _code(json.dumps(prop["default"], ensure_ascii=False)))
    return text + (f" ({'; '.join(notes)})" if notes else "")
