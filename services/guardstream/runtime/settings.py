"""The one settings object. Every process reads its configuration from here and nowhere else.

`Settings` is a frozen root of frozen sections (`settings.kafka.bootstrap`,
`settings.review.edge.max_in_flight`, ...), one per part of the system. Values come from the
environment, then from the env file (`.env` in the working directory, or the file
`GUARDSTREAM_ENV_FILE` names; `guardstream stack up` writes it), under each field's documented
env name, the flat names guardstream always had (`GUARDSTREAM_REVIEW_MAX_CLAIMS`,
`KAFKA_BOOTSTRAP`); a `GUARDSTREAM_*` name no field claims, in either, stops the process at
start-up, so a typo is not silently a default; `settings_sources()` says where they came
from. Secrets are `SecretStr` and never appear in `repr` or in `Settings.public_view()`, which
is what processes log at start-up and `guardstream settings` / `doctor` print: every URL there
goes through `mask_url`.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, Self
from urllib.parse import unquote

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import InitErrorDetails, PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from guardstream.contracts.topics import CATALOGUE

_NAMESPACE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,40}$")
_TOPIC_NAMES = frozenset(spec.topic.value for spec in CATALOGUE)


# Query parameters whose values are shown as written. Every other value is masked: a name
# cannot tell a password from a setting (`password`, `sslpassword`, `token`, `sig`, `key` ...),
# so the list names what is known to be harmless instead of what is known to be secret.
SHOWN_QUERY_PARAMS = frozenset(
    {
        "application_name",
        "connect_timeout",
        "db",
        "health_check_interval",
        "protocol",
        "socket_timeout",
        "ssl",
        "ssl_cert_reqs",
        "sslmode",
        "target_session_attrs",
        "timeout",
    }
)
MASK = "***"


class _Url(NamedTuple):
    scheme: str
    user: str | None  # None: no user info (or all of it masked, see `_split_url`)
    password: str | None  # None: no `:` in the user info
    where: str  # host, port and path
    query: str | None  # None: no `?`
    fragment: str | None  # None: no `#`


def _split_url(url: str) -> _Url | None:
    """The parts of `url`, None if it has no `://`.

    The user info ends at the last `@` before the first `?` or `#` (as drivers read it), so a
    password holding `@` or `/` unencoded is still taken whole. An `@` after the first `?` or
    `#` is ambiguous (a query value holding `@`, or a password holding `?` or `#`): then all
    of the URL after `scheme://` is the password, user None. A user name holding `/` is no
    name: all of the user info is masked.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return None
    cut = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    if "@" in rest[cut:]:
        return _Url(scheme, None, rest, "", None, None)
    userinfo, at, tail = rest.rpartition("@")
    user: str | None = None
    password: str | None = None
    if at:
        name, colon, secret = userinfo.partition(":")
        if "/" in name:
            user, password = "", userinfo
        else:
            user, password = name, secret if colon else None
    tail, hashmark, fragment = tail.partition("#")
    where, qmark, query = tail.partition("?")
    return _Url(
        scheme, user, password, where, query if qmark else None, fragment if hashmark else None
    )


def _masked_query(query: str) -> tuple[str, list[str]]:
    """`query` with every value but those of `SHOWN_QUERY_PARAMS` masked, and what was."""
    shown: list[str] = []
    hidden: list[str] = []
    for part in query.split("&"):
        name, eq, value = part.partition("=")
        if not part or (eq and unquote(name).lower() in SHOWN_QUERY_PARAMS):
            shown.append(part)
        elif eq:
            shown.append(f"{name}={MASK}")
            hidden.append(value)
        else:
            shown.append(MASK)  # a bare `?token`
            hidden.append(part)
    return "&".join(shown), hidden


def mask_url(url: str) -> str:
    """`url` with its credentials masked wherever they are; never raises.

    `redis://u:pw@host:6379/0?password=x&db=1#f` → `redis://u:***@host:6379/0?password=***&db=1#***`:
    the password of the user info, every query value but those of `SHOWN_QUERY_PARAMS`, and
    the fragment. Scheme, user, host, port and path stay (an address may be logged, a password
    not). A string without `://` is returned as it is; one with an `@` after its first `?` or
    `#` as `scheme://***` (where its password ends cannot be told).
    """
    parts = _split_url(url)
    if parts is None:
        return url
    shown = f"{parts.scheme}://"
    if parts.password is not None:
        shown += MASK if parts.user is None else f"{parts.user}:{MASK}@"
    elif parts.user is not None:
        shown += f"{parts.user}@"
    shown += parts.where
    if parts.query is not None:
        shown += "?" + _masked_query(parts.query)[0]
    if parts.fragment is not None:
        shown += f"#{MASK}"
    return shown


def url_secrets(url: str) -> list[str]:
    """What `mask_url` hides in `url`, as written and percent-decoded (a driver's error message
    may quote either): to scrub texts that quote them outside the URL."""
    parts = _split_url(url)
    if parts is None:
        return []
    hidden = [parts.password, parts.fragment]
    if parts.query is not None:
        hidden += _masked_query(parts.query)[1]
    return [text for value in hidden if value for text in dict.fromkeys((value, unquote(value)))]


def masked(value: object) -> object:
    """A setting as it may be shown: a secret `***` (its credentials masked if a URL), any
    other URL through `mask_url`, a path as text."""
    if isinstance(value, SecretStr):
        secret = value.get_secret_value()
        return mask_url(secret) if "://" in secret else MASK
    if isinstance(value, str) and "://" in value:
        return mask_url(value)
    if isinstance(value, Path):
        return str(value)
    return value


# Names under the `GUARDSTREAM_` prefix that are not settings: read by the test harness and
# by docker-compose, never by a process, so their presence is no typo.
NOT_SETTINGS = frozenset(
    {
        "GUARDSTREAM_CHAOS_OUTAGE_S",
        "GUARDSTREAM_CHAOS_REPORT",
        "GUARDSTREAM_CHROMIUM",
        "GUARDSTREAM_ENV_FILE",  # read by the loader itself: which env file (see ENV_FILE_VAR)
        "GUARDSTREAM_GPU_MODEL",
        "GUARDSTREAM_TEST_BROKER_RESTART",
    }
)
_PREFIX = "GUARDSTREAM_"

ENV_FILE_VAR = "GUARDSTREAM_ENV_FILE"
"""Names the env file every command reads; unset: `.env` in the working directory; empty: none."""
DEFAULT_ENV_FILE = Path(".env")


def env_file_path() -> Path | None:
    """The env file every command reads: `GUARDSTREAM_ENV_FILE` when set (empty: none), else
    `.env` in the working directory (read when present)."""
    named = os.environ.get(ENV_FILE_VAR)
    if named is None:
        return DEFAULT_ENV_FILE
    return Path(named).expanduser() if named.strip() else None


@dataclass(frozen=True)
class SettingsSources:
    """Where the settings came from: the env file read (None: none), and the env names each
    source set that a setting reads (a name in both is the environment's: it wins)."""

    env_file: Path | None
    from_environment: tuple[str, ...]
    from_env_file: tuple[str, ...]

    def describe(self) -> str:
        """One line for people: `environment (2: KAFKA_BOOTSTRAP, ...), /x/.env (5: ...)`."""

        def names(found: tuple[str, ...]) -> str:
            shown = ", ".join(found[:6]) + (", ..." if len(found) > 6 else "")
            return f"{len(found)}: {shown}" if found else "nothing"

        where = (
            "no env file"
            if self.env_file is None
            else f"{self.env_file.resolve()} ({names(self.from_env_file)})"
            if self.env_file.is_file()
            else f"no env file at {self.env_file.resolve()}"
        )
        return f"environment ({names(self.from_environment)}), {where}, defaults for the rest"


def settings_sources(env_file: Path | None = None) -> SettingsSources:
    """Which setting env names the environment and the env file (default: `env_file_path()`)
    set, as `Settings()` reads them."""
    path = env_file_path() if env_file is None else env_file
    known = {name for f in every_setting() for name in f.env}
    environment = tuple(sorted(name for name in known if name in os.environ))
    in_file: tuple[str, ...] = ()
    if path is not None and path.is_file():
        values = _read_env_file(path)
        in_file = tuple(sorted(n for n in known if n.lower() in values and n not in environment))
    return SettingsSources(path, environment, in_file)


_PLAIN_VALUE = re.compile(r"^[A-Za-z0-9_./:@,+=%-]*$")


def env_file_text(entries: Mapping[str, str], header: str = "") -> str:
    """An env file setting `entries` (env name → value) that `Settings()` reads back as
    written: a value that is not plain is single-quoted, its `\\` and `'` escaped."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    for name, value in entries.items():
        if not re.fullmatch(r"[A-Z_][A-Z0-9_]*", name):
            raise ValueError(f"not an env name: {name!r}")
        if "\n" in value or "\r" in value or "\0" in value:
            raise ValueError(f"{name}: an env file value cannot hold a line break or NUL")
        if not _PLAIN_VALUE.match(value):
            value = "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
        lines.append(f"{name}={value}")
    return "\n".join(lines) + "\n"


def _read_env_file(path: Path) -> Mapping[str, str | None]:
    """The env file's entries, names lower-cased (as pydantic-settings reads them)."""
    source = DotEnvSettingsSource(Settings, env_file=path)
    return source.env_vars


def _env(*names: str) -> Any:
    """The env names a field is read from, first found wins (its validation aliases; code
    passes the field's own name)."""
    return Field(validation_alias=AliasChoices(*names))


def _int_from_text(value: object) -> object:
    # An env value is text, and an integer `Literal` matches ints only.
    return int(value) if isinstance(value, str) else value


class Section(BaseModel):
    """A group of settings: frozen, unknown names refused, a field's docstring its description."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", populate_by_name=True, use_attribute_docstrings=True
    )


class KafkaSettings(Section):
    """Kafka: where the brokers are, how to reach them, how consumers poll."""

    bootstrap: Annotated[str, _env("KAFKA_BOOTSTRAP")] = "127.0.0.1:9092"
    """Bootstrap brokers, `host:port[,host:port...]`."""
    security_protocol: Annotated[
        Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"], _env("KAFKA_SECURITY_PROTOCOL")
    ] = "PLAINTEXT"
    """How clients talk to the brokers."""
    sasl_mechanism: Annotated[str | None, _env("KAFKA_SASL_MECHANISM")] = None
    """SASL mechanism (`PLAIN`, `SCRAM-SHA-256`, ...) with a `SASL_*` protocol."""
    sasl_username: Annotated[str | None, _env("KAFKA_SASL_USERNAME")] = None
    """SASL user name."""
    sasl_password: Annotated[SecretStr | None, _env("KAFKA_SASL_PASSWORD")] = None
    """SASL password."""
    max_poll_interval_ms: Annotated[int, Field(ge=1000), _env("KAFKA_MAX_POLL_INTERVAL_MS")] = (
        300_000
    )
    """The group evicts a member that does not poll for this long. The runtime keeps polling
    while batches are slow (partitions paused), so a slow scorer is not evicted."""
    fetch_max_wait_ms: Annotated[int, Field(ge=1), _env("KAFKA_FETCH_MAX_WAIT_MS")] = 50
    """How long the broker may hold a fetch waiting for data: latency on a quiet topic."""
    topic_replication: Annotated[int, Field(ge=1), _env("GUARDSTREAM_TOPIC_REPLICATION")] = 1
    """Replicas per topic created by `guardstream topics create` (3 on a production cluster)."""
    max_request_bytes: Annotated[
        int, Field(ge=1 << 20), _env("GUARDSTREAM_KAFKA_MAX_REQUEST_BYTES")
    ] = 16 << 20
    """Largest produce request. The broker must accept this; a 5 MB poison body has to reach the
    DLQ record (its first `dlq_payload_max_bytes`, with its size and SHA-256)."""
    dlq_payload_max_bytes: Annotated[
        int, Field(ge=0), _env("GUARDSTREAM_DLQ_PAYLOAD_MAX_BYTES")
    ] = 256 << 10
    """Most bytes of a rejected record's payload a DLQ record keeps (and never more than 70% of
    `max_request_bytes`); its size and the SHA-256 of the whole are always kept. The default
    holds any record the pipeline could accept (`max_text_chars` characters of UTF-8 and the
    envelope), so such a record can be replayed from its DLQ record; larger ones are poison."""
    dlq_redact: Annotated[bool, _env("GUARDSTREAM_DLQ_REDACT")] = False
    """Replace personal data (e-mails, phones, ID and card numbers, secret URLs) in the kept
    DLQ payload with placeholders (`payload_redacted`). Off by default: a redacted payload can
    no longer be replayed or matched against its digest; turn on where DLQ readers must not see
    personal data."""


class RedisSettings(Section):
    """Redis: the verdict cache and the decision journal."""

    url: Annotated[SecretStr, _env("REDIS_URL")] = SecretStr("redis://127.0.0.1:6379/0")
    """Redis URL (credentials masked wherever it is shown)."""
    timeout_ms: Annotated[int, Field(gt=0), _env("GUARDSTREAM_CACHE_TIMEOUT_MS")] = 200
    """Redis is an optimisation: a lookup slower than this is a miss (fail open to scoring)."""
    cache_ttl_s: Annotated[int, Field(gt=0), _env("GUARDSTREAM_CACHE_TTL_S")] = 7 * 24 * 3600
    """How long a model verdict is reused for the same content (packs may set their own)."""
    journal_ttl_s: Annotated[int, Field(gt=0), _env("GUARDSTREAM_JOURNAL_TTL_S")] = 7 * 24 * 3600
    """How long a post event's decision is remembered for byte-identical re-emission on replay
    (at least the posts topic's retention)."""


class DatabaseSettings(Section):
    """PostgreSQL: the review store and the API's tables (keys)."""

    url: Annotated[SecretStr, _env("DATABASE_URL")] = SecretStr(
        "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    """PostgreSQL URL (credentials masked wherever it is shown)."""
    review_schema: Annotated[
        str, Field(pattern=r"^[a-z_][a-z0-9_]{0,62}$"), _env("GUARDSTREAM_REVIEW_DB_SCHEMA")
    ] = "review"
    """PostgreSQL schema of the review store (tests use one schema each)."""
    pool_max: Annotated[int, Field(ge=2), _env("GUARDSTREAM_REVIEW_DB_POOL_MAX")] = 20
    """Connections the review store's pool may open."""


class ModelSettings(Section):
    """The guard model every process names, and the LoRA adapters that specialise it."""

    name: Annotated[str, _env("GUARDSTREAM_MODEL")] = "Qwen/Qwen3Guard-Gen-0.6B"
    """Hub id or path of the guard model; `tiny` builds (once, cached) and serves the project's
    own offline test checkpoint."""
    cache_dir: Annotated[Path, _env("GUARDSTREAM_MODEL_CACHE_DIR")] = (
        Path.home() / ".cache" / "guardstream"
    )
    """Where built checkpoints (`tiny`) are kept."""
    adapter_dir: Annotated[Path | None, _env("GUARDSTREAM_ADAPTER_DIR")] = None
    """LoRA adapter registry (guardstream.model.adapters), shared by triage and every scorer;
    unset: no adapters, the base model serves every tenant."""
    adapter_poll_s: Annotated[float, Field(gt=0), _env("GUARDSTREAM_ADAPTER_POLL_S")] = 5.0
    """How often processes look for a promoted adapter (no restart needed)."""


class EngineSettings(Section):
    """The scorer's inference engine: how the guard model is run."""

    kind: Annotated[Literal["vllm", "transformers"], _env("GUARDSTREAM_ENGINE")] = "vllm"
    """`vllm` (default) or `transformers` (same prompts and parser, batched, no vLLM needed:
    laptops, GPU machines where vLLM is not installed)."""
    max_model_len: Annotated[int, Field(ge=256), _env("GUARDSTREAM_MAX_MODEL_LEN")] = 4096
    """Longest prompt plus answer, in tokens."""
    gpu_memory_utilization: Annotated[
        float | None, Field(gt=0, le=1), _env("GUARDSTREAM_GPU_MEMORY_UTILIZATION")
    ] = None
    """Fraction of accelerator memory (of NUMA-node memory on the CPU build) vLLM may take.
    Unset: 0.9 on a GPU, 0.2 on the CPU build (its default 0.92 does not start there)."""
    dtype: Annotated[
        Literal["auto", "half", "float16", "bfloat16", "float", "float32"],
        _env("GUARDSTREAM_MODEL_DTYPE"),
    ] = "auto"
    """Weights' and activations' dtype."""
    max_output_tokens: Annotated[int, Field(ge=8), _env("GUARDSTREAM_MAX_OUTPUT_TOKENS")] = 48
    """Longest answer the model may write."""
    scoring_mode: Annotated[Literal["two_phase", "plain"], _env("GUARDSTREAM_SCORING_MODE")] = (
        "two_phase"
    )
    """`two_phase`: one prefill reads the label after a forced `Safety:` prefix; categories (and
    a response's refusal) are generated only when needed, continuing from the cached prefix.
    `plain`: the model writes its whole answer. Both are parsed by the same parser."""
    two_phase_refusal: Annotated[bool, _env("GUARDSTREAM_TWO_PHASE_REFUSAL")] = True
    """Two-phase: also read a SAFE response's `Refusal:` (one more one-token request from the
    cached prefix). Off: a safe response's refusal is left unknown, one request per safe post."""
    prefix_caching: Annotated[bool, _env("GUARDSTREAM_PREFIX_CACHING")] = True
    """vLLM automatic prefix caching: the two phases (and posts sharing the policy preamble)
    reuse KV blocks instead of recomputing them. The transformers engine's cousin: the prompt
    prefix a batch shares is prefilled once (hf_engine). Off only to measure what it buys."""
    max_lora_rank: Annotated[
        Literal[1, 8, 16, 32, 64, 128, 256, 320, 512],
        BeforeValidator(_int_from_text),
        _env("GUARDSTREAM_MAX_LORA_RANK"),
    ] = 16
    """Largest adapter rank the engine reserves room for (vLLM accepts these values)."""
    max_loras: Annotated[int, Field(ge=1), _env("GUARDSTREAM_MAX_LORAS")] = 4
    """Adapters one engine batch may mix (vLLM max_loras)."""


class PolicySettings(Section):
    """Policy packs: what each tenant's content is judged by."""

    dir: Annotated[Path | None, _env("GUARDSTREAM_POLICY_DIR")] = None
    """Directory of policy pack YAML files; unset: the packs shipped with guardstream."""
    poll_s: Annotated[
        float, Field(ge=0, allow_inf_nan=False), _env("GUARDSTREAM_POLICY_POLL_S")
    ] = 10.0
    """How often every process re-reads the policy directory and puts a changed, valid set of
    packs in force without a restart (0: never; the shipped packs are never re-read)."""
    near_duplicates: Annotated[bool, _env("GUARDSTREAM_NEAR_DUPLICATES")] = True
    """Near-duplicate reuse (SimHash, see guardstream.verdict.neardup); packs can switch it off."""


class ProcessSettings(Section):
    """How every process runs its loop, drains, retries, logs and reports health."""

    shutdown_drain_s: Annotated[float, Field(ge=0), _env("GUARDSTREAM_SHUTDOWN_DRAIN_S")] = 20.0
    """On SIGTERM, how long in-flight batches may take to finish before the process exits."""
    poll_timeout_ms: Annotated[int, Field(ge=1), _env("GUARDSTREAM_POLL_TIMEOUT_MS")] = 200
    """How long one poll waits for records."""
    commit_interval_ms: Annotated[int, Field(ge=0), _env("GUARDSTREAM_COMMIT_INTERVAL_MS")] = 500
    """Offsets of finished work are committed at most this often (0: after every fetch round).
    Each commit is a round trip the loop waits for before its next fetch; rebalances and
    shutdown commit at once whatever the interval, and a crash only redelivers more."""
    retry_backoff_max_s: Annotated[float, Field(gt=0), _env("GUARDSTREAM_RETRY_BACKOFF_MAX_S")] = (
        30.0
    )
    """Cap of the exponential backoff between retries of a transient failure."""
    max_text_chars: Annotated[int, Field(ge=1), _env("GUARDSTREAM_MAX_TEXT_CHARS")] = 65_536
    """Longest post text accepted; a longer one is a contract error (to the DLQ)."""
    health_port: Annotated[int, Field(ge=0, le=65535), _env("GUARDSTREAM_HEALTH_PORT")] = 0
    """Port of the health/readiness HTTP endpoint; 0 disables it."""
    listen_host: Annotated[str, _env("GUARDSTREAM_LISTEN_HOST")] = "127.0.0.1"
    """Address the health endpoint and the Prometheus `/metrics` listen on: this machine only
    by default; containers set `0.0.0.0` (docker-compose, the Helm chart) to be probed."""
    log_level: Annotated[str, _env("GUARDSTREAM_LOG_LEVEL")] = "INFO"
    """Log level (`DEBUG`, `INFO`, `WARNING`, ...)."""
    fault: Annotated[
        str | None, Field(pattern=r"^[a-z_]+(:[0-9]+)?$"), _env("GUARDSTREAM_FAULT")
    ] = None
    """Test-only crash injection (see guardstream.runtime.faults); never set in a deployment."""


class TriageSettings(Section):
    """The triage process: rules, cache and journal in front of the scorer."""

    batch_max: Annotated[int, Field(ge=1), _env("GUARDSTREAM_TRIAGE_BATCH_MAX")] = 500
    """Records triaged in one batch."""
    max_in_flight: Annotated[int, Field(ge=1), _env("GUARDSTREAM_TRIAGE_MAX_IN_FLIGHT")] = 5000
    """Records triage may hold unfinished before it pauses its partitions (backpressure)."""
    scorer_unavailable_after_s: Annotated[
        float, Field(gt=0), _env("GUARDSTREAM_SCORER_UNAVAILABLE_AFTER_S")
    ] = 120.0
    """Once one of triage's score requests has waited this long unanswered (the scorer group
    committed nothing past it), posts under `fail_closed` packs that need scoring are sent to
    review with source `rule` instead of queueing (see guardstream.triage.watch)."""


class ScorerSettings(Section):
    """The scorer process: what it consumes, how much it batches, cascade and shadow scoring."""

    source: Annotated[Literal["requests", "escalations"], _env("GUARDSTREAM_SCORER_SOURCE")] = (
        "requests"
    )
    """What this scorer consumes: `requests` from triage (first or only tier) or `escalations`
    (the larger model's tier, in its own consumer group `guardstream-scorer-escalations`)."""
    cascade_escalate_below: Annotated[
        float | None, Field(gt=0, le=1), _env("GUARDSTREAM_CASCADE_ESCALATE_BELOW")
    ] = None
    """Cascade: a scorer with a threshold decides only verdicts at least this confident; the
    rest (and unusable output) go to the escalations topic for a larger model's scorer,
    uncached. Unset: this scorer decides everything (no cascade, or the last tier)."""
    batch_max: Annotated[int, Field(ge=1), _env("GUARDSTREAM_SCORER_BATCH_MAX")] = 64
    """Requests scored in one batch."""
    max_in_flight: Annotated[int, Field(ge=1), _env("GUARDSTREAM_SCORER_MAX_IN_FLIGHT")] = 256
    """Records the scorer may hold unfinished before it pauses its partitions (backpressure)."""
    shadow_max_in_flight: Annotated[int, Field(ge=0), _env("GUARDSTREAM_SHADOW_MAX_IN_FLIGHT")] = 8
    """Shadow scoring: a tenant's shadow candidate adapter scores that tenant's fresh content
    too, after the serving verdict, in the background; its verdict goes to moderation.shadow.v1
    only. At most this many shadow scorings run at once per scorer; the rest are skipped
    (counted `shadow_skipped`), so shadow work never queues behind serving. 0 turns shadow
    scoring off."""
    shadow_sample_rate: Annotated[
        float, Field(ge=0, le=1), _env("GUARDSTREAM_SHADOW_SAMPLE_RATE")
    ] = 1.0
    """Share of fresh content keys scored in shadow (chosen by content key, so every replica
    picks the same ones): bounds the extra engine work to about this fraction."""
    interactive_host: Annotated[str, _env("GUARDSTREAM_SCORER_INTERACTIVE_HOST")] = "127.0.0.1"
    """Address of the interactive endpoint (`POST /v1/score`, the API's direct door to this
    scorer's engine)."""
    interactive_port: Annotated[
        int, Field(ge=0, le=65535), _env("GUARDSTREAM_SCORER_INTERACTIVE_PORT")
    ] = 0
    """Port of the interactive endpoint; 0 turns it off (the scorer then serves Kafka only).
    The API's `GUARDSTREAM_API_SCORER_URL` points at it."""
    interactive_max_in_flight: Annotated[
        int, Field(ge=1), _env("GUARDSTREAM_SCORER_INTERACTIVE_MAX_IN_FLIGHT")
    ] = 64
    """Interactive requests scored at once; one more is refused at once (503, Retry-After)
    so a saturated engine answers quickly instead of queueing callers."""


class ApiSettings(Section):
    """The moderation API (`guardstream api`): the synchronous door beside Kafka."""

    host: Annotated[str, _env("GUARDSTREAM_API_HOST")] = "127.0.0.1"
    """Address the API listens on."""
    port: Annotated[int, Field(ge=0, le=65535), _env("GUARDSTREAM_API_PORT")] = 8080
    """Port the API listens on."""
    scorer_url: Annotated[str, _env("GUARDSTREAM_API_SCORER_URL")] = "http://127.0.0.1:8095"
    """The scorer's interactive endpoint (`GUARDSTREAM_SCORER_INTERACTIVE_PORT`)."""
    deadline_s: Annotated[float, Field(gt=0, le=300), _env("GUARDSTREAM_API_DEADLINE_S")] = 5.0
    """Time a post may take to be scored; past it the post is `controversial` and goes to
    review (never `safe`)."""
    batch_max: Annotated[int, Field(ge=1, le=1000), _env("GUARDSTREAM_API_BATCH_MAX")] = 32
    """Posts in one `POST /v1/moderate/batch` or one `/v1/moderations` call."""
    max_body_bytes: Annotated[int, Field(ge=1024), _env("GUARDSTREAM_API_MAX_BODY_BYTES")] = 1 << 20
    """Largest request body accepted; a larger one is refused (413) before it is read."""
    retry_after_s: Annotated[int, Field(ge=1), _env("GUARDSTREAM_API_RETRY_AFTER_S")] = 1
    """`Retry-After` of a 503 (the scorer unreachable or saturated)."""
    auth: Annotated[Literal["keys", "off"], _env("GUARDSTREAM_API_AUTH")] = "keys"
    """`keys`: every `/v1` route needs `Authorization: Bearer <key>` (`guardstream api
    add-key`) and answers for the key's tenant only. `off`: no keys, the tenant comes from the
    body or `x-guardstream-tenant` as the caller says, for local development only (refused
    unless the API listens on a loopback address)."""
    key_rate_per_s: Annotated[
        float, Field(gt=0, le=1_000_000), _env("GUARDSTREAM_API_KEY_RATE_PER_S")
    ] = 50.0
    """Requests per second one key may make (shared by every API replica, in Redis), unless
    the key was added with its own `--rate`."""
    key_burst: Annotated[int, Field(ge=1, le=1_000_000), _env("GUARDSTREAM_API_KEY_BURST")] = 100
    """Requests one key may make at once above its rate before it is answered 429."""
    key_cache_s: Annotated[float, Field(ge=0, le=300), _env("GUARDSTREAM_API_KEY_CACHE_S")] = 5.0
    """How long an API process trusts what it read about a key: a revoked key stops working
    on every replica within this many seconds (0: read the database on every request)."""
    db_pool_max: Annotated[int, Field(ge=1), _env("GUARDSTREAM_API_DB_POOL_MAX")] = 4
    """Connections the API's PostgreSQL pool may open (its tables live in the database and
    schema of `DATABASE_URL` and `GUARDSTREAM_REVIEW_DB_SCHEMA`)."""


class WebhookSettings(Section):
    """Decision callbacks (`api.webhooks`): a human's or the SLA timer's final decision on a
    post that came through the API, POSTed signed to the tenant's registered URL."""

    max_attempts: Annotated[int, Field(ge=1, le=100), _env("GUARDSTREAM_WEBHOOK_MAX_ATTEMPTS")] = 8
    """Tries of one delivery; after the last failed one it goes to the DLQ (status `dead`)."""
    backoff_base_s: Annotated[
        float, Field(gt=0, le=3600), _env("GUARDSTREAM_WEBHOOK_BACKOFF_BASE_S")
    ] = 5.0
    """Wait after the first failed try; it doubles with each further one (jittered: half to
    all of it), up to `GUARDSTREAM_WEBHOOK_BACKOFF_CAP_S`."""
    backoff_cap_s: Annotated[
        float, Field(gt=0, le=86400), _env("GUARDSTREAM_WEBHOOK_BACKOFF_CAP_S")
    ] = 3600.0
    """Longest wait between two tries of one delivery."""
    timeout_s: Annotated[float, Field(gt=0, le=120), _env("GUARDSTREAM_WEBHOOK_TIMEOUT_S")] = 10.0
    """Time a receiver has to answer one POST; no answer in time is a failed try."""
    poll_s: Annotated[float, Field(gt=0, le=60), _env("GUARDSTREAM_WEBHOOK_POLL_S")] = 1.0
    """How often the delivery loop looks for due deliveries when nothing woke it."""
    batch: Annotated[int, Field(ge=1, le=1000), _env("GUARDSTREAM_WEBHOOK_BATCH")] = 16
    """Deliveries one replica claims and sends at once."""
    allow_private: Annotated[bool, _env("GUARDSTREAM_WEBHOOK_ALLOW_PRIVATE")] = False
    """Allow URLs naming or resolving to loopback, private, link-local or other non-public
    addresses (local development and tests only: otherwise a tenant could make guardstream
    call its own network)."""
    retention_days: Annotated[
        int, Field(ge=1, le=3650), _env("GUARDSTREAM_WEBHOOK_RETENTION_DAYS")
    ] = 30
    """How long finished deliveries and watched posts are kept (at least the action topics'
    retention: a replayed decision older than this would be delivered again)."""


class ReviewEdgeSettings(Section):
    """The review API's edge (guardstream.review.shield): what sheds load before a handler."""

    max_body_bytes: Annotated[int, Field(ge=1024), _env("GUARDSTREAM_REVIEW_MAX_BODY_BYTES")] = (
        64 * 1024
    )
    """A request body over this is answered 413 once its declared or streamed length passes it
    (a decision is a few KiB; the chart gives the ingress the same limit)."""
    max_in_flight: Annotated[int, Field(ge=1), _env("GUARDSTREAM_REVIEW_MAX_IN_FLIGHT")] = 64
    """Requests handled at once; past it a fast 503 + Retry-After (/healthz, /readyz exempt)."""
    max_in_flight_anonymous: Annotated[
        int, Field(ge=1), _env("GUARDSTREAM_REVIEW_MAX_IN_FLIGHT_ANONYMOUS")
    ] = 16
    """Of those, requests without a bearer token or session cookie (logins, strangers); past it
    a fast 429: strangers cannot take the reviewers' share."""
    max_connections: Annotated[int, Field(ge=16), _env("GUARDSTREAM_REVIEW_MAX_CONNECTIONS")] = 1024
    """Open connections plus requests uvicorn accepts (its `limit_concurrency`, a 503 for all
    past it, health probes included): the backstop behind the limits above."""
    hash_workers: Annotated[int, Field(ge=1), _env("GUARDSTREAM_REVIEW_HASH_WORKERS")] = 2
    """Password checks (scrypt, 16 MiB and ~50 ms each) run on this many threads, at most
    `hash_queue` more waiting; past that a login is answered 429 at once."""
    hash_queue: Annotated[int, Field(ge=0), _env("GUARDSTREAM_REVIEW_HASH_QUEUE")] = 8
    """Password checks that may wait for a hashing thread."""
    login_per_id_per_min: Annotated[
        int, Field(ge=1), _env("GUARDSTREAM_REVIEW_LOGIN_PER_ID_PER_MIN")
    ] = 5
    """Login attempts per reviewer id a minute, with a burst of the same size; past it 429 +
    Retry-After before any hashing. Per process."""
    login_per_address_per_min: Annotated[
        int, Field(ge=1), _env("GUARDSTREAM_REVIEW_LOGIN_PER_ADDRESS_PER_MIN")
    ] = 30
    """Login attempts per client address (IPv6: per /64) a minute, as above."""
    login_throttle_keys: Annotated[
        int, Field(ge=100), _env("GUARDSTREAM_REVIEW_LOGIN_THROTTLE_KEYS")
    ] = 100_000
    """Ids and addresses the login throttle remembers (least recently seen forgotten first)."""
    denied_audit_per_s: Annotated[
        float, Field(gt=0), _env("GUARDSTREAM_REVIEW_DENIED_AUDIT_PER_S")
    ] = 10.0
    """Audit rows for refused attempts (throttled logins, control characters) at most this many
    a second; those past it are counted into the next row written."""


class ReviewSettings(Section):
    """The review console (`guardstream review`): its server, sessions, queue and claims."""

    host: Annotated[str, _env("GUARDSTREAM_REVIEW_HOST")] = "127.0.0.1"
    """Where the console's HTTP server (API, console page, /healthz, /readyz) listens: this
    machine only by default; containers set `0.0.0.0` (docker-compose, the Helm chart)."""
    port: Annotated[int, Field(ge=0, le=65535), _env("GUARDSTREAM_REVIEW_PORT")] = 8090
    """Port of the console's HTTP server."""
    session_secret: Annotated[SecretStr | None, _env("GUARDSTREAM_REVIEW_SESSION_SECRET")] = None
    """Signs console session cookies. Unset: a random key per start (sessions end on restart)."""
    session_ttl_s: Annotated[int, Field(gt=0), _env("GUARDSTREAM_REVIEW_SESSION_TTL_S")] = 8 * 3600
    """Lifetime of a console session."""
    token_ttl_s: Annotated[int, Field(gt=0), _env("GUARDSTREAM_REVIEW_TOKEN_TTL_S")] = 12 * 3600
    """Lifetime of an API bearer token from `POST /api/v1/auth/token` or `review add-reviewer`."""
    cookie_secure: Annotated[bool, _env("GUARDSTREAM_REVIEW_COOKIE_SECURE")] = True
    """Mark the console's session cookie Secure. Leave it on wherever a browser reaches the
    console over https (directly or through a TLS ingress); turn it off only for local use
    over plain http (browsers may drop a Secure cookie sent over http). A request that came
    over https gets a Secure cookie whatever this says."""
    forwarded_allow_ips: Annotated[
        str, _env("GUARDSTREAM_REVIEW_FORWARDED_ALLOW_IPS", "FORWARDED_ALLOW_IPS")
    ] = "127.0.0.1,::1"
    """Proxies trusted to say the client's scheme and address (X-Forwarded-Proto/-For):
    comma-separated addresses or networks, "*" for any (only when nothing but the proxy can
    reach the console). uvicorn's own FORWARDED_ALLOW_IPS is read too."""
    max_claims: Annotated[int, Field(ge=1, le=100), _env("GUARDSTREAM_REVIEW_MAX_CLAIMS")] = 1
    """How many tasks one reviewer may hold at once (claims and round-robin assignments); the
    database enforces it. The review process writes it to the store when it starts."""
    lock_s: Annotated[int, Field(gt=0), _env("GUARDSTREAM_REVIEW_LOCK_S")] = 600
    """A claimed task goes back to the queue when its reviewer holds it longer than this."""
    assign_interval_s: Annotated[
        float, Field(gt=0), _env("GUARDSTREAM_REVIEW_ASSIGN_INTERVAL_S")
    ] = 2.0
    """How often pending tasks are assigned round-robin to on-call reviewers, expired locks
    released and the outbox relayed."""
    tags: Annotated[str, _env("GUARDSTREAM_REVIEW_TAGS")] = (
        "性别歧视,地域攻击,健康污名,政治隐喻,误判,"
        "gender discrimination,regional attack,health stigma,political allusion,false positive"
    )
    """Quick tags a reviewer must pick from (at least one), comma-separated."""
    post_text_ttl_s: Annotated[int, Field(gt=0), _env("GUARDSTREAM_REVIEW_POST_TEXT_TTL_S")] = (
        2 * 24 * 3600
    )
    """Post texts without a review task are purged after this (they are kept for reviewers)."""
    batch_max: Annotated[int, Field(ge=1), _env("GUARDSTREAM_REVIEW_BATCH_MAX")] = 500
    """Records the review consumers take in one batch."""
    human_verdict_ttl_s: Annotated[int, Field(gt=0), _env("GUARDSTREAM_HUMAN_VERDICT_TTL_S")] = (
        90 * 24 * 3600
    )
    """A human verdict overrides the model's for its content key this long (sticky override)."""
    edge: ReviewEdgeSettings = ReviewEdgeSettings()
    """The API's edge: body size, concurrency and login limits."""

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _check_forwarded_allow_ips(cls, value: str) -> str:
        # A typo must not quietly trust nobody (or, worse, be read as a host name).
        for item in (part.strip() for part in value.split(",")):
            if item == "*":
                continue
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(
                    f"review.forwarded_allow_ips: {item!r} is not an address, a network or '*'"
                ) from None
        return value


class QaSettings(Section):
    """QA audits of reviewers: senior re-reviews of a sample of first reviews."""

    agreement_min: Annotated[float, Field(ge=0, le=1), _env("GUARDSTREAM_QA_AGREEMENT_MIN")] = 0.9
    """Reviewers whose agreement with senior re-reviews is below this raise an alert."""
    cadence: Annotated[Literal["monthly", "weekly"], _env("GUARDSTREAM_QA_CADENCE")] = "monthly"
    """The review process samples each finished month (or ISO week) once."""
    sample_size: Annotated[int, Field(ge=0, le=10_000), _env("GUARDSTREAM_QA_SAMPLE_SIZE")] = 100
    """First reviews per period put in the seniors' QA queue; 0 = no automatic sampling."""


class FeedbackSettings(Section):
    """The feedback loop (guardstream.feedback): curation, training, shadow evaluation."""

    dir: Annotated[Path, _env("GUARDSTREAM_FEEDBACK_DIR")] = (
        Path.home() / ".local" / "share" / "guardstream" / "feedback"
    )
    """Root of the review archive (dated JSONL) and of the training runs' adapters and cards."""
    min_samples: Annotated[int, Field(ge=1), _env("GUARDSTREAM_FEEDBACK_MIN_SAMPLES")] = 500
    """Training starts when this many curated samples were reviewed since the last run."""
    confidence_below: Annotated[
        float, Field(gt=0, le=1), _env("GUARDSTREAM_FEEDBACK_CONFIDENCE_BELOW")
    ] = 0.85
    """Curation keeps samples the model was less sure of than this (or got wrong)."""
    expert_terms: Annotated[str, _env("GUARDSTREAM_FEEDBACK_EXPERT_TERMS")] = ""
    """Comma-separated terms that mark an expert reason (weight 2x); empty: the built-in list."""
    anchor_ratio: Annotated[float, Field(ge=0), _env("GUARDSTREAM_FEEDBACK_ANCHOR_RATIO")] = 1.0
    """Confident agreements replayed per curated sample against forgetting (see curation)."""
    prescreen_model: Annotated[str | None, _env("GUARDSTREAM_FEEDBACK_PRESCREEN_MODEL")] = None
    """A small model (hub id, path or `tiny`) that prescreens curated labels: when it confidently
    contradicts the human label, the sample is held for a senior instead of trained on.
    Unset: no prescreen. It must not be the serving model, which disagrees by definition."""
    promotion_margin: Annotated[
        float, Field(ge=0, le=1), _env("GUARDSTREAM_FEEDBACK_PROMOTION_MARGIN")
    ] = 0.02
    """A candidate adapter must beat the serving one by this much held-out accuracy."""
    shadow_min_samples: Annotated[
        int, Field(ge=1), _env("GUARDSTREAM_FEEDBACK_SHADOW_MIN_SAMPLES")
    ] = 200
    """A candidate that passed the held-out gate shadows live traffic; the shadow evaluation
    (`guardstream feedback run` / `shadow-report`) judges it once it has this many
    shadow-scored content keys ..."""
    shadow_min_labelled: Annotated[
        int, Field(ge=1), _env("GUARDSTREAM_FEEDBACK_SHADOW_MIN_LABELLED")
    ] = 30
    """... of which at least this many have a later human label."""
    shadow_fpr_tolerance: Annotated[
        float, Field(ge=0, le=1), _env("GUARDSTREAM_FEEDBACK_SHADOW_FPR_TOLERANCE")
    ] = 0.02
    """It is promoted when its accuracy against those labels beats the serving adapter's by
    GUARDSTREAM_FEEDBACK_PROMOTION_MARGIN and its false-positive rate is at most this much
    above the serving adapter's; otherwise it is retired."""
    shadow_window_days: Annotated[
        float, Field(gt=0), _env("GUARDSTREAM_FEEDBACK_SHADOW_WINDOW_DAYS")
    ] = 14.0
    """A candidate without enough shadow evidence after this many days is retired."""
    shared_pool: Annotated[str, _env("GUARDSTREAM_FEEDBACK_SHARED_POOL")] = ""
    """Comma-separated tenants that opted into a shared training pool: a pool member's adapter
    (`feedback run --tenant T`) trains on every member's archive. Any other tenant's adapter
    trains on its own archive only; the every-tenant adapter (`--tenant '*'`) on all of it."""
    min_judges: Annotated[int, Field(ge=1, le=10), _env("GUARDSTREAM_FEEDBACK_MIN_JUDGES")] = 2
    """A label judges a model (held-out set, shadow gate) only when this many distinct
    reviewers gave it, or it is a senior's QA re-review; any label can train. 1: any label."""
    reviewer_cap: Annotated[float, Field(gt=0, le=1), _env("GUARDSTREAM_FEEDBACK_REVIEWER_CAP")] = (
        0.3
    )
    """No reviewer contributes more than this share of a training or held-out set, nor of the
    shadow gate's labelled keys (samples beyond it are left out, the model card lists samples
    per reviewer). 1: no cap."""
    auto_promote: Annotated[bool, _env("GUARDSTREAM_FEEDBACK_AUTO_PROMOTE")] = False
    """False: a candidate that passed the shadow gate waits in shadow for a recorded human
    approval (`guardstream feedback approve RUN --by ID`) before it serves. True: the shadow
    gate promotes on its own (the deployment opts out of the human check)."""
    train_steps: Annotated[int | None, Field(ge=1), _env("GUARDSTREAM_FEEDBACK_TRAIN_STEPS")] = None
    """LoRA optimiser steps; unset: 3 epochs over the training set."""
    learning_rate: Annotated[float, Field(gt=0), _env("GUARDSTREAM_FEEDBACK_LEARNING_RATE")] = 2e-4
    """LoRA learning rate."""
    train_reasons: Annotated[bool, _env("GUARDSTREAM_FEEDBACK_TRAIN_REASONS")] = False
    """Teach reviewers' reasons too: targets end with a `Reason:` line where the reviewer gave
    one, and the scorer lets an adapter so trained write its own rationale on decisions. Off
    by default: on the tiny test checkpoint the extra line costs the label its learning."""


class TelemetrySettings(Section):
    """Telemetry (guardstream.runtime.telemetry): Prometheus, OTLP traces and metrics."""

    metrics_port: Annotated[int, Field(ge=0, le=65535), _env("GUARDSTREAM_METRICS_PORT")] = 0
    """Prometheus exposition (`/metrics`) on this port; 0 = not served."""
    otlp_endpoint: Annotated[str | None, _env("OTEL_EXPORTER_OTLP_ENDPOINT")] = None
    """OTLP/HTTP collector base URL (traces to /v1/traces, metrics to /v1/metrics); unset = off."""
    otlp_headers: Annotated[SecretStr | None, _env("OTEL_EXPORTER_OTLP_HEADERS")] = None
    """Extra OTLP request headers, `k1=v1,k2=v2` (often an auth token: secret)."""
    otlp_metrics_interval_ms: Annotated[int, Field(ge=100), _env("OTEL_METRIC_EXPORT_INTERVAL")] = (
        15_000
    )
    """How often metrics are pushed over OTLP (the Prometheus endpoint is pulled instead)."""
    trace_sample_ratio: Annotated[
        float, Field(ge=0, le=1), _env("GUARDSTREAM_TRACE_SAMPLE_RATIO")
    ] = 1.0
    """Fraction of new traces recorded; a post whose producer sampled it is always recorded."""
    environment: Annotated[str, _env("GUARDSTREAM_ENVIRONMENT")] = "local"
    """Deployment name shown as `deployment.environment` on every span and `target_info`."""


class SlaSettings(Section):
    """The SLA timer (`guardstream sla`): contested items unreviewed past their deadline."""

    tick_s: Annotated[float, Field(gt=0, le=60), _env("GUARDSTREAM_SLA_TICK_S")] = 1.0
    """How often the timer looks for due items: downgrades fire at most this much (plus the time
    a tick takes) after their deadline while the worker runs."""
    retain_s: Annotated[int, Field(gt=0), _env("GUARDSTREAM_SLA_RETAIN_S")] = 7 * 24 * 3600
    """How long a finished item (reviewed or downgraded) stays in the table, so a late or
    duplicate review is still recognised."""
    response_window: Annotated[int, Field(ge=1), _env("GUARDSTREAM_SLA_RESPONSE_WINDOW")] = 200
    """The average review response time is the mean over the last this many reviews."""
    data_dir: Annotated[Path, _env("GUARDSTREAM_SLA_DATA_DIR")] = (
        Path.home() / ".local" / "share" / "guardstream" / "sla"
    )
    """The SLA app's local data directory (faust's datadir, one subdirectory per namespace). The
    table store itself is in memory and rebuilt from its changelog topic on start."""
    session_timeout_s: Annotated[float, Field(ge=6), _env("GUARDSTREAM_SLA_SESSION_TIMEOUT_S")] = (
        10.0
    )
    """Group session timeout of the SLA app: how soon a killed worker's partitions move on."""


class RetentionSettings(Section):
    """How long each store keeps what it holds (`guardstream maintenance`, the chart's
    CronJob) and where erasure receipts go (`guardstream erase`); docs/operations/privacy.md."""

    post_text_days: Annotated[
        float, Field(gt=0, le=3650), _env("GUARDSTREAM_RETENTION_POST_TEXT_DAYS")
    ] = 30.0
    """A reviewed post's text (and its task, reviews and QA items) is deleted this many days
    after its decision became final (the task was decided)."""
    outbox_days: Annotated[
        float, Field(gt=0, le=3650), _env("GUARDSTREAM_RETENTION_OUTBOX_DAYS")
    ] = 1.0
    """Relayed outbox rows are deleted this long after they were sent; a human verdict's row
    stays as long as its verdict lives (`GUARDSTREAM_HUMAN_VERDICT_TTL_S`): the console
    restores a flushed verdict cache from it."""
    audit_days: Annotated[float, Field(gt=0, le=3650), _env("GUARDSTREAM_RETENTION_AUDIT_DAYS")] = (
        365.0
    )
    """Audit rows older than this are deleted."""
    archive_days: Annotated[
        float, Field(gt=0, le=3650), _env("GUARDSTREAM_RETENTION_ARCHIVE_DAYS")
    ] = 365.0
    """Day directories of the feedback archive older than this are deleted (training then
    forgets them), and so is the author index that lets `erase --author` find them."""
    dlq_days: Annotated[float, Field(gt=0, le=3650), _env("GUARDSTREAM_RETENTION_DLQ_DAYS")] = 30.0
    """`retention.ms` of the dead-letter topic (whole payloads with author ids): set by
    `guardstream topics create` and checked by `guardstream maintenance`."""
    topic_days: Annotated[str, _env("GUARDSTREAM_RETENTION_TOPIC_DAYS")] = ""
    """Other topics' retention overrides, `topic=days,...` with catalogue names
    (`posts.v1=3`); unnamed topics keep the catalogue's retention (`guardstream topics list`).
    A record copied into a time-retained topic lives at most its topic's retention."""
    receipts_dir: Annotated[Path | None, _env("GUARDSTREAM_ERASURE_RECEIPTS_DIR")] = None
    """Where erasure receipts are written (JSON, no text); unset: `<GUARDSTREAM_FEEDBACK_DIR>/
    erasures`."""
    lock_timeout_s: Annotated[
        float, Field(ge=0, le=3600), _env("GUARDSTREAM_MAINTENANCE_LOCK_TIMEOUT_S")
    ] = 0.0
    """How long `guardstream maintenance` waits for a concurrent run's lock; 0: skip at once."""

    @field_validator("topic_days")
    @classmethod
    def _check_topic_days(cls, value: str) -> str:
        topic_overrides(value)
        return value


def topic_overrides(value: str) -> dict[str, float]:
    """`topic=days,...` as {catalogue topic name: days}; ValueError names a bad entry."""
    out: dict[str, float] = {}
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        name, sep, days = item.partition("=")
        try:
            parsed = float(days)
        except ValueError:
            parsed = -1.0
        if not sep or not name.strip() or not 0 < parsed <= 3650:
            raise ValueError(f"retention.topic_days: {item!r} is not topic=days (0 < days <= 3650)")
        if name.strip() not in _TOPIC_NAMES:
            # An unknown name would be ignored: the topic the operator meant keeps its retention.
            raise ValueError(
                f"retention.topic_days: {name.strip()[:80]!r} is no catalogue topic "
                f"({', '.join(sorted(_TOPIC_NAMES))})"
            )
        out[name.strip()] = parsed
    return out


class Settings(BaseSettings):
    """Configuration of every guardstream process: the namespace and one section per part.

    Construct it with sections as dicts (`Settings(review={"max_claims": 2})`), copy it with
    `replace`; each field's env names are its validation aliases (see `every_setting`).
    """

    model_config = SettingsConfigDict(
        frozen=True,
        env_file=DEFAULT_ENV_FILE,  # replaced by `env_file_path()` unless `_env_file` is given
        env_file_encoding="utf-8",
        extra="forbid",
        populate_by_name=True,
        use_attribute_docstrings=True,
    )

    namespace: Annotated[str, _env("GUARDSTREAM_NAMESPACE")] = ""
    """One namespace isolates topics, consumer groups and cache keys; empty: none."""
    kafka: KafkaSettings = KafkaSettings()
    """Kafka: brokers, security, polling."""
    redis: RedisSettings = RedisSettings()
    """Redis: the verdict cache and the decision journal."""
    database: DatabaseSettings = DatabaseSettings()
    """PostgreSQL: the review store."""
    model: ModelSettings = ModelSettings()
    """The guard model and its LoRA adapters."""
    engine: EngineSettings = EngineSettings()
    """The scorer's inference engine."""
    policy: PolicySettings = PolicySettings()
    """Policy packs."""
    process: ProcessSettings = ProcessSettings()
    """What every process shares: loop, drain, retries, logs, health."""
    triage: TriageSettings = TriageSettings()
    """The triage process."""
    scorer: ScorerSettings = ScorerSettings()
    """The scorer process: source, batching, cascade, shadow scoring."""
    review: ReviewSettings = ReviewSettings()
    """The review console and its API's edge."""
    api: ApiSettings = ApiSettings()
    """The moderation API (`guardstream api`)."""
    webhooks: WebhookSettings = WebhookSettings()
    """Decision callbacks of the moderation API."""
    qa: QaSettings = QaSettings()
    """QA audits of reviewers."""
    feedback: FeedbackSettings = FeedbackSettings()
    """The feedback loop."""
    telemetry: TelemetrySettings = TelemetrySettings()
    """Metrics and traces."""
    sla: SlaSettings = SlaSettings()
    """The SLA timer."""
    retention: RetentionSettings = RetentionSettings()
    """Retention per store and erasure receipts."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The env names are flat and the fields nested, which pydantic-settings' own sources
        # cannot map: one source reads every field's names from the environment, then `.env`.
        given = init_settings.init_kwargs if isinstance(init_settings, InitSettingsSource) else {}
        if isinstance(dotenv_settings, DotEnvSettingsSource) and (
            dotenv_settings.env_file == DEFAULT_ENV_FILE
        ):
            # Not given by the caller (`_env_file`): the file every command reads.
            path = env_file_path()
            if path is not None and path != DEFAULT_ENV_FILE and not path.is_file():
                # Named on purpose, so a typo must not quietly mean the defaults.
                problem = _refusal(ENV_FILE_VAR, f"names {path}, which is no file", None)
                raise ValidationError.from_exception_data(settings_cls.__name__, [problem])
            dotenv_settings = DotEnvSettingsSource(settings_cls, env_file=path)
        found = [
            s.env_vars for s in (env_settings, dotenv_settings) if isinstance(s, EnvSettingsSource)
        ]
        return init_settings, _EnvNames(settings_cls, given, found)

    @field_validator("namespace")
    @classmethod
    def _check_namespace(cls, value: str) -> str:
        if value and not _NAMESPACE.match(value):
            raise ValueError("namespace: lowercase letters, digits, '-' and '_' (max 41)")
        return value

    @cached_property
    def cache_prefix(self) -> str:
        """Redis key prefix; the namespace keeps tests and tenants of a shared Redis apart."""
        return f"gs:{self.namespace}:" if self.namespace else "gs:"

    def group_id(self, process: str) -> str:
        base = f"guardstream-{process}"
        return f"{self.namespace}.{base}" if self.namespace else base

    def replace(self, **changes: object) -> Self:
        """A validated copy with `changes`: root fields by name, a section's fields as a dict
        (`settings.replace(review={"max_claims": 2, "edge": {"max_in_flight": 8}})`); what
        they do not name stays. The environment is not read again."""
        return self.model_validate(_merged(self.model_dump(), changes))

    def flat(self) -> dict[str, object]:
        """Every setting's value by its dotted path (`review.edge.max_in_flight`)."""
        return dict(_values(self, ""))

    def public_view(self) -> dict[str, object]:
        """What a process logs at start-up: every setting by its dotted path, secrets and URL
        credentials masked."""
        return {path: masked(value) for path, value in self.flat().items()}


@dataclass(frozen=True)
class SettingField:
    """One setting as the docs and `guardstream settings` show it."""

    path: str  # `review.edge.max_in_flight`
    env: tuple[str, ...]  # the names it is read from, first found wins
    info: FieldInfo  # type, default, constraints, description


def every_setting(model: type[BaseModel] = Settings, prefix: str = "") -> Iterator[SettingField]:
    """Every setting of `model` (sections walked), in declaration order."""
    for name, info in model.model_fields.items():
        section = _section(info)
        if section is None:
            yield SettingField(prefix + name, env_names(info), info)
        else:
            yield from every_setting(section, f"{prefix}{name}.")


def env_names(info: FieldInfo) -> tuple[str, ...]:
    """The env names a field is read from, first found wins."""
    alias = info.validation_alias
    return tuple(map(str, alias.choices)) if isinstance(alias, AliasChoices) else ()


def _section(info: FieldInfo) -> type[Section] | None:
    kind = info.annotation
    return kind if isinstance(kind, type) and issubclass(kind, Section) else None


def _values(model: BaseModel, prefix: str) -> Iterator[tuple[str, object]]:
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, Section):
            yield from _values(value, f"{prefix}{name}.")
        else:
            yield prefix + name, value


def _merged(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        old = merged.get(key)
        if isinstance(old, Mapping) and isinstance(value, Mapping):
            value = _merged(old, value)
        merged[key] = value
    return merged


class _EnvNames(PydanticBaseSettingsSource):
    """Each field's value under the env name it was found by, sections nested, for what the
    constructor did not set; a `GUARDSTREAM_*` name no field claims, or a constructor argument
    no field has, is refused here with the name it should have been."""

    def __init__(
        self,
        settings_cls: type[BaseSettings],
        given: Mapping[str, Any],
        found: Sequence[Mapping[str, str | None]],
    ) -> None:
        super().__init__(settings_cls)
        self._given = given
        self._found = found  # highest priority first, keys lower-cased

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        # Not called: `__call__` reads every field, sections included, itself.
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        fields = list(every_setting(self.settings_cls))
        problems = [*self._unknown_arguments(fields), *self._unknown_env_names(fields)]
        if problems:
            raise ValidationError.from_exception_data(self.settings_cls.__name__, problems)
        return _read(self.settings_cls, self._given, self._found)

    def _unknown_arguments(self, fields: list[SettingField]) -> Iterator[InitErrorDetails]:
        """Constructor arguments no field has: a flat name of old (`review_max_claims`) is
        answered with its section's (`review.max_claims`)."""
        root = self.settings_cls.model_fields
        known = {*root, *(name for info in root.values() for name in env_names(info))}
        flat_names = {f.path.replace(".", "_"): f.path for f in fields}
        leaves = Counter(f.path.rpartition(".")[2] for f in fields)
        flat_names |= {
            f.path.rpartition(".")[2]: f.path
            for f in fields
            if leaves[f.path.rpartition(".")[2]] == 1
        }
        for name in self._given:
            if name not in known:
                yield _refusal(name, "is no setting", _nearest(name, flat_names))

    def _unknown_env_names(self, fields: list[SettingField]) -> Iterator[InitErrorDetails]:
        """`GUARDSTREAM_*` names in the environment or `.env` that no field reads."""
        ours = [name for f in fields for name in f.env if name.startswith(_PREFIX)]
        claimed = {name.lower() for name in (*ours, *NOT_SETTINGS)}
        # Compared without the prefix every one of them shares.
        meant = {name.removeprefix(_PREFIX): name for name in ours}
        seen = {key for source in self._found for key in source}
        for key in sorted(seen):
            name = key.upper()
            if name.startswith(_PREFIX) and key not in claimed:
                guess = _nearest(name.removeprefix(_PREFIX), meant)
                yield _refusal(name, "is set but is no guardstream setting", guess)


def _nearest(name: str, candidates: Mapping[str, str]) -> str | None:
    """What `name` was probably meant to be: `candidates` maps spellings to that."""
    if name in candidates:
        return candidates[name]
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.75)
    return candidates[close[0]] if close else None


def _refusal(name: str, problem: str, meant: str | None) -> InitErrorDetails:
    hint = f"; did you mean {meant}?" if meant else ""
    return {
        "type": PydanticCustomError(
            "unknown_setting", "{problem}{hint}", {"problem": problem, "hint": hint}
        ),
        "loc": (name,),
        "input": name,  # not the value: it may be a secret
    }


def _read(
    model: type[BaseModel], given: Mapping[str, Any], found: Sequence[Mapping[str, str | None]]
) -> dict[str, Any]:
    """`model`'s fields found in `found`, each under the env name it was found by (so an error
    names it), sections nested; none that `given` sets (a dict there is merged with these)."""
    data: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        names = env_names(info)
        section = _section(info)
        if section is not None:
            inner = given.get(name, {})
            if isinstance(inner, Mapping) and (values := _read(section, inner, found)):
                data[name] = values
        elif name not in given and not given.keys() & set(names):
            hit = next(
                ((n, s[n.lower()]) for s in found for n in names if s.get(n.lower()) is not None),
                None,
            )
            if hit is not None:
                data[hit[0]] = hit[1]
    return data
