"""The one settings object. Every process reads its configuration from here and nowhere else.

Values come from the environment (and a `.env` file when present); secrets are `SecretStr` and
never appear in `repr` or in `Settings.public_view()`, which is what processes log at start-up
and `guardstream settings` / `doctor` print: every URL there goes through `mask_url`.
"""

from __future__ import annotations

import ipaddress
import re
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal, NamedTuple
from urllib.parse import unquote

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_NAMESPACE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,40}$")


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


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


class Settings(BaseSettings):
    """Configuration of every guardstream process. Env names are given by each field's alias."""

    model_config = SettingsConfigDict(
        frozen=True,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
    )

    # --- naming: one namespace isolates topics, consumer groups and cache keys -------------
    namespace: Annotated[str, Field(validation_alias=_env("GUARDSTREAM_NAMESPACE"))] = ""

    # --- Kafka ----------------------------------------------------------------------------
    kafka_bootstrap: Annotated[str, Field(validation_alias=_env("KAFKA_BOOTSTRAP"))] = (
        "127.0.0.1:9092"
    )
    kafka_security_protocol: Annotated[
        Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"],
        Field(validation_alias=_env("KAFKA_SECURITY_PROTOCOL")),
    ] = "PLAINTEXT"
    kafka_sasl_mechanism: Annotated[
        str | None, Field(validation_alias=_env("KAFKA_SASL_MECHANISM"))
    ] = None
    kafka_sasl_username: Annotated[
        str | None, Field(validation_alias=_env("KAFKA_SASL_USERNAME"))
    ] = None
    kafka_sasl_password: Annotated[
        SecretStr | None, Field(validation_alias=_env("KAFKA_SASL_PASSWORD"))
    ] = None
    # The group evicts a member that does not poll for this long. The runtime keeps polling
    # while batches are slow (partitions paused), so a slow scorer is not evicted.
    kafka_max_poll_interval_ms: Annotated[
        int, Field(ge=1000, validation_alias=_env("KAFKA_MAX_POLL_INTERVAL_MS"))
    ] = 300_000
    # How long the broker may hold a fetch waiting for data: latency on a quiet topic.
    kafka_fetch_max_wait_ms: Annotated[
        int, Field(ge=1, validation_alias=_env("KAFKA_FETCH_MAX_WAIT_MS"))
    ] = 50
    # Replicas per topic created by `guardstream topics create` (3 on a production cluster).
    topic_replication: Annotated[
        int, Field(ge=1, validation_alias=_env("GUARDSTREAM_TOPIC_REPLICATION"))
    ] = 1
    # The broker must accept this; a 5 MB poison body has to reach the DLQ intact.
    kafka_max_request_bytes: Annotated[
        int, Field(ge=1 << 20, validation_alias=_env("GUARDSTREAM_KAFKA_MAX_REQUEST_BYTES"))
    ] = 16 << 20

    # --- Redis verdict cache ----------------------------------------------------------------
    redis_url: Annotated[SecretStr, Field(validation_alias=_env("REDIS_URL"))] = SecretStr(
        "redis://127.0.0.1:6379/0"
    )
    cache_ttl_s: Annotated[int, Field(gt=0, validation_alias=_env("GUARDSTREAM_CACHE_TTL_S"))] = (
        7 * 24 * 3600
    )
    # How long a post event's decision is remembered for byte-identical re-emission on replay
    # (at least the posts topic's retention).
    journal_ttl_s: Annotated[
        int, Field(gt=0, validation_alias=_env("GUARDSTREAM_JOURNAL_TTL_S"))
    ] = 7 * 24 * 3600
    # Redis is an optimisation: a lookup slower than this is a miss (fail open to scoring).
    cache_timeout_ms: Annotated[
        int, Field(gt=0, validation_alias=_env("GUARDSTREAM_CACHE_TIMEOUT_MS"))
    ] = 200

    # --- PostgreSQL (review store; used by later processes) ------------------------------
    database_url: Annotated[SecretStr, Field(validation_alias=_env("DATABASE_URL"))] = SecretStr(
        "postgresql://postgres@127.0.0.1:5432/postgres"
    )

    # --- model ------------------------------------------------------------------------------
    # `tiny` builds (once, cached) and serves the project's own offline test checkpoint.
    model: Annotated[str, Field(validation_alias=_env("GUARDSTREAM_MODEL"))] = (
        "Qwen/Qwen3Guard-Gen-0.6B"
    )
    model_cache_dir: Annotated[
        Path, Field(validation_alias=_env("GUARDSTREAM_MODEL_CACHE_DIR"))
    ] = Path.home() / ".cache" / "guardstream"
    max_model_len: Annotated[
        int, Field(ge=256, validation_alias=_env("GUARDSTREAM_MAX_MODEL_LEN"))
    ] = 4096
    # Fraction of accelerator memory (of NUMA-node memory on the CPU build) vLLM may take.
    # Unset: 0.9 on a GPU, 0.2 on the CPU build (its default 0.92 does not start there).
    gpu_memory_utilization: Annotated[
        float | None, Field(gt=0, le=1, validation_alias=_env("GUARDSTREAM_GPU_MEMORY_UTILIZATION"))
    ] = None
    model_dtype: Annotated[
        Literal["auto", "half", "float16", "bfloat16", "float", "float32"],
        Field(validation_alias=_env("GUARDSTREAM_MODEL_DTYPE")),
    ] = "auto"
    max_output_tokens: Annotated[
        int, Field(ge=8, validation_alias=_env("GUARDSTREAM_MAX_OUTPUT_TOKENS"))
    ] = 48
    # `two_phase`: one prefill reads the label after a forced `Safety:` prefix; categories (and
    # a response's refusal) are generated only when needed, continuing from the cached prefix.
    # `plain`: the model writes its whole answer. Both are parsed by the same parser.
    scoring_mode: Annotated[
        Literal["two_phase", "plain"], Field(validation_alias=_env("GUARDSTREAM_SCORING_MODE"))
    ] = "two_phase"
    # Two-phase: also read a SAFE response's `Refusal:` (one more one-token request from the
    # cached prefix). Off: a safe response's refusal is left unknown, one request per safe post.
    two_phase_refusal: Annotated[
        bool, Field(validation_alias=_env("GUARDSTREAM_TWO_PHASE_REFUSAL"))
    ] = True
    # `vllm` (default) or `transformers` (same prompts and parser, batched, no vLLM needed:
    # laptops, GPU machines where vLLM is not installed).
    engine: Annotated[
        Literal["vllm", "transformers"], Field(validation_alias=_env("GUARDSTREAM_ENGINE"))
    ] = "vllm"
    # vLLM automatic prefix caching: the two phases (and posts sharing the policy preamble)
    # reuse KV blocks instead of recomputing them. The transformers engine's cousin: the prompt
    # prefix a batch shares is prefilled once (hf_engine). Off only to measure what it buys.
    prefix_caching: Annotated[bool, Field(validation_alias=_env("GUARDSTREAM_PREFIX_CACHING"))] = (
        True
    )

    # Cascade. A scorer with a threshold decides only verdicts at least this confident; the
    # rest (and unusable output) go to the escalations topic for a larger model's scorer,
    # uncached. Unset: this scorer decides everything (no cascade, or the last tier).
    cascade_escalate_below: Annotated[
        float | None,
        Field(gt=0, le=1, validation_alias=_env("GUARDSTREAM_CASCADE_ESCALATE_BELOW")),
    ] = None
    # What this scorer consumes: `requests` from triage (first or only tier) or `escalations`
    # (the larger model's tier, in its own consumer group `guardstream-scorer-escalations`).
    scorer_source: Annotated[
        Literal["requests", "escalations"],
        Field(validation_alias=_env("GUARDSTREAM_SCORER_SOURCE")),
    ] = "requests"

    # LoRA adapter registry (guardstream.model.adapters), shared by triage and every scorer;
    # unset: no adapters, the base model serves every tenant.
    adapter_dir: Annotated[Path | None, Field(validation_alias=_env("GUARDSTREAM_ADAPTER_DIR"))] = (
        None
    )
    # How often processes look for a promoted adapter (no restart needed).
    adapter_poll_s: Annotated[
        float, Field(gt=0, validation_alias=_env("GUARDSTREAM_ADAPTER_POLL_S"))
    ] = 5.0
    # Largest adapter rank the engine reserves room for (vLLM accepts these values).
    max_lora_rank: Annotated[
        Literal[1, 8, 16, 32, 64, 128, 256, 320, 512],
        Field(validation_alias=_env("GUARDSTREAM_MAX_LORA_RANK")),
    ] = 16
    # Adapters one engine batch may mix (vLLM max_loras).
    max_loras: Annotated[int, Field(ge=1, validation_alias=_env("GUARDSTREAM_MAX_LORAS"))] = 4
    # Shadow scoring (scorer): a tenant's shadow candidate adapter scores that tenant's fresh
    # content too, after the serving verdict, in the background; its verdict goes to
    # moderation.shadow.v1 only. At most this many shadow scorings run at once per scorer; the
    # rest are skipped (counted `shadow_skipped`), so shadow work never queues behind serving.
    # 0 turns shadow scoring off.
    shadow_max_in_flight: Annotated[
        int, Field(ge=0, validation_alias=_env("GUARDSTREAM_SHADOW_MAX_IN_FLIGHT"))
    ] = 8
    # Share of fresh content keys scored in shadow (chosen by content key, so every replica
    # picks the same ones): bounds the extra engine work to about this fraction.
    shadow_sample_rate: Annotated[
        float, Field(ge=0, le=1, validation_alias=_env("GUARDSTREAM_SHADOW_SAMPLE_RATE"))
    ] = 1.0

    # --- processing -------------------------------------------------------------------------
    # Directory of policy pack YAML files; unset: the packs shipped with guardstream.
    policy_dir: Annotated[Path | None, Field(validation_alias=_env("GUARDSTREAM_POLICY_DIR"))] = (
        None
    )
    # Near-duplicate reuse (SimHash, see guardstream.verdict.neardup); packs can switch it off.
    near_duplicates: Annotated[
        bool, Field(validation_alias=_env("GUARDSTREAM_NEAR_DUPLICATES"))
    ] = True
    triage_batch_max: Annotated[
        int, Field(ge=1, validation_alias=_env("GUARDSTREAM_TRIAGE_BATCH_MAX"))
    ] = 500
    scorer_batch_max: Annotated[
        int, Field(ge=1, validation_alias=_env("GUARDSTREAM_SCORER_BATCH_MAX"))
    ] = 64
    # Records a process may hold unfinished before it pauses its partitions (backpressure).
    triage_max_in_flight: Annotated[
        int, Field(ge=1, validation_alias=_env("GUARDSTREAM_TRIAGE_MAX_IN_FLIGHT"))
    ] = 5000
    scorer_max_in_flight: Annotated[
        int, Field(ge=1, validation_alias=_env("GUARDSTREAM_SCORER_MAX_IN_FLIGHT"))
    ] = 256
    # On SIGTERM, how long in-flight batches may take to finish before the process exits.
    shutdown_drain_s: Annotated[
        float, Field(ge=0, validation_alias=_env("GUARDSTREAM_SHUTDOWN_DRAIN_S"))
    ] = 20.0
    poll_timeout_ms: Annotated[
        int, Field(ge=1, validation_alias=_env("GUARDSTREAM_POLL_TIMEOUT_MS"))
    ] = 200
    # Offsets of finished work are committed at most this often (0: after every fetch round).
    # Each commit is a round trip the loop waits for before its next fetch; rebalances and
    # shutdown commit at once whatever the interval, and a crash only redelivers more.
    commit_interval_ms: Annotated[
        int, Field(ge=0, validation_alias=_env("GUARDSTREAM_COMMIT_INTERVAL_MS"))
    ] = 500
    retry_backoff_max_s: Annotated[
        float, Field(gt=0, validation_alias=_env("GUARDSTREAM_RETRY_BACKOFF_MAX_S"))
    ] = 30.0
    max_text_chars: Annotated[
        int, Field(ge=1, validation_alias=_env("GUARDSTREAM_MAX_TEXT_CHARS"))
    ] = 65_536
    # 0 disables the health/readiness HTTP endpoint.
    health_port: Annotated[
        int, Field(ge=0, le=65535, validation_alias=_env("GUARDSTREAM_HEALTH_PORT"))
    ] = 0
    # Test-only crash injection (see guardstream.runtime.faults); never set in a deployment.
    fault: Annotated[
        str | None,
        Field(pattern=r"^[a-z_]+(:[0-9]+)?$", validation_alias=_env("GUARDSTREAM_FAULT")),
    ] = None
    log_level: Annotated[str, Field(validation_alias=_env("GUARDSTREAM_LOG_LEVEL"))] = "INFO"
    # Triage: once one of its score requests has waited this long unanswered (the scorer
    # group committed nothing past it), posts under `fail_closed` packs that need scoring are
    # sent to review with source `rule` instead of queueing (see guardstream.triage.watch).
    scorer_unavailable_after_s: Annotated[
        float, Field(gt=0, validation_alias=_env("GUARDSTREAM_SCORER_UNAVAILABLE_AFTER_S"))
    ] = 120.0

    # --- review console (`guardstream review`) ----------------------------------------------
    # A human verdict overrides the model's for its content key this long (sticky override).
    human_verdict_ttl_s: Annotated[
        int, Field(gt=0, validation_alias=_env("GUARDSTREAM_HUMAN_VERDICT_TTL_S"))
    ] = 90 * 24 * 3600
    # Where the console's HTTP server (API, console page, /healthz, /readyz) listens.
    # All interfaces by default, as the health endpoints: containers are reached from outside.
    review_host: Annotated[str, Field(validation_alias=_env("GUARDSTREAM_REVIEW_HOST"))] = "0.0.0.0"  # noqa: S104
    review_port: Annotated[
        int, Field(ge=0, le=65535, validation_alias=_env("GUARDSTREAM_REVIEW_PORT"))
    ] = 8090
    # PostgreSQL schema of the review store (tests use one schema each).
    review_db_schema: Annotated[
        str,
        Field(
            pattern=r"^[a-z_][a-z0-9_]{0,62}$",
            validation_alias=_env("GUARDSTREAM_REVIEW_DB_SCHEMA"),
        ),
    ] = "review"
    review_db_pool_max: Annotated[
        int, Field(ge=2, validation_alias=_env("GUARDSTREAM_REVIEW_DB_POOL_MAX"))
    ] = 20
    # Signs console session cookies. Unset: a random key per start (sessions end on restart).
    review_session_secret: Annotated[
        SecretStr | None, Field(validation_alias=_env("GUARDSTREAM_REVIEW_SESSION_SECRET"))
    ] = None
    review_session_ttl_s: Annotated[
        int, Field(gt=0, validation_alias=_env("GUARDSTREAM_REVIEW_SESSION_TTL_S"))
    ] = 8 * 3600
    # Lifetime of an API bearer token from `POST /api/v1/auth/token` or `review add-reviewer`.
    review_token_ttl_s: Annotated[
        int, Field(gt=0, validation_alias=_env("GUARDSTREAM_REVIEW_TOKEN_TTL_S"))
    ] = 12 * 3600
    # Mark the console's session cookie Secure. Leave it on wherever a browser reaches the
    # console over https (directly or through a TLS ingress); turn it off only for local use
    # over plain http (browsers may drop a Secure cookie sent over http). A request that came
    # over https gets a Secure cookie whatever this says.
    review_cookie_secure: Annotated[
        bool, Field(validation_alias=_env("GUARDSTREAM_REVIEW_COOKIE_SECURE"))
    ] = True
    # Proxies trusted to say the client's scheme and address (X-Forwarded-Proto/-For):
    # comma-separated addresses or networks, "*" for any (only when nothing but the proxy can
    # reach the console). uvicorn's own FORWARDED_ALLOW_IPS is read too.
    review_forwarded_allow_ips: Annotated[
        str,
        Field(
            validation_alias=_env("GUARDSTREAM_REVIEW_FORWARDED_ALLOW_IPS", "FORWARDED_ALLOW_IPS")
        ),
    ] = "127.0.0.1,::1"
    # How many tasks one reviewer may hold at once (claims and round-robin assignments); the
    # database enforces it. The review process writes it to the store when it starts.
    review_max_claims: Annotated[
        int, Field(ge=1, le=100, validation_alias=_env("GUARDSTREAM_REVIEW_MAX_CLAIMS"))
    ] = 1
    # A claimed task goes back to the queue when its reviewer holds it longer than this.
    review_lock_s: Annotated[
        int, Field(gt=0, validation_alias=_env("GUARDSTREAM_REVIEW_LOCK_S"))
    ] = 600
    # How often pending tasks are assigned round-robin to on-call reviewers, expired locks
    # released and the outbox relayed.
    review_assign_interval_s: Annotated[
        float, Field(gt=0, validation_alias=_env("GUARDSTREAM_REVIEW_ASSIGN_INTERVAL_S"))
    ] = 2.0
    # Quick tags a reviewer must pick from (at least one), comma-separated.
    review_tags: Annotated[str, Field(validation_alias=_env("GUARDSTREAM_REVIEW_TAGS"))] = (
        "性别歧视,地域攻击,健康污名,政治隐喻,误判,"
        "gender discrimination,regional attack,health stigma,political allusion,false positive"
    )
    # Post texts without a review task are purged after this (they are kept for reviewers).
    review_post_text_ttl_s: Annotated[
        int, Field(gt=0, validation_alias=_env("GUARDSTREAM_REVIEW_POST_TEXT_TTL_S"))
    ] = 2 * 24 * 3600
    review_batch_max: Annotated[
        int, Field(ge=1, validation_alias=_env("GUARDSTREAM_REVIEW_BATCH_MAX"))
    ] = 500
    # --- the review API's edge (guardstream.review.shield): what sheds load before a handler --
    # A request body over this is answered 413 once its declared or streamed length passes it
    # (a decision is a few KiB; the chart gives the ingress the same limit).
    review_max_body_bytes: Annotated[
        int, Field(ge=1024, validation_alias=_env("GUARDSTREAM_REVIEW_MAX_BODY_BYTES"))
    ] = 64 * 1024
    # Requests handled at once; past it a fast 503 + Retry-After (/healthz, /readyz exempt).
    review_max_in_flight: Annotated[
        int, Field(ge=1, validation_alias=_env("GUARDSTREAM_REVIEW_MAX_IN_FLIGHT"))
    ] = 64
    # Of those, requests without a bearer token or session cookie (logins, strangers); past it
    # a fast 429: strangers cannot take the reviewers' share.
    review_max_in_flight_anonymous: Annotated[
        int, Field(ge=1, validation_alias=_env("GUARDSTREAM_REVIEW_MAX_IN_FLIGHT_ANONYMOUS"))
    ] = 16
    # Open connections plus requests uvicorn accepts (its `limit_concurrency`, a 503 for all
    # past it, health probes included): the backstop behind the limits above.
    review_max_connections: Annotated[
        int, Field(ge=16, validation_alias=_env("GUARDSTREAM_REVIEW_MAX_CONNECTIONS"))
    ] = 1024
    # Password checks (scrypt, 16 MiB and ~50 ms each) run on this many threads, at most
    # `review_hash_queue` more waiting; past that a login is answered 429 at once.
    review_hash_workers: Annotated[
        int, Field(ge=1, validation_alias=_env("GUARDSTREAM_REVIEW_HASH_WORKERS"))
    ] = 2
    review_hash_queue: Annotated[
        int, Field(ge=0, validation_alias=_env("GUARDSTREAM_REVIEW_HASH_QUEUE"))
    ] = 8
    # Login attempts per reviewer id and per client address (IPv6: per /64), a minute, with a
    # burst of the same size; past it 429 + Retry-After before any hashing. Per process.
    review_login_per_id_per_min: Annotated[
        int, Field(ge=1, validation_alias=_env("GUARDSTREAM_REVIEW_LOGIN_PER_ID_PER_MIN"))
    ] = 5
    review_login_per_address_per_min: Annotated[
        int, Field(ge=1, validation_alias=_env("GUARDSTREAM_REVIEW_LOGIN_PER_ADDRESS_PER_MIN"))
    ] = 30
    # Ids and addresses the login throttle remembers (least recently seen forgotten first).
    review_login_throttle_keys: Annotated[
        int, Field(ge=100, validation_alias=_env("GUARDSTREAM_REVIEW_LOGIN_THROTTLE_KEYS"))
    ] = 100_000
    # Audit rows for refused attempts (throttled logins, control characters) at most this many
    # a second; those past it are counted into the next row written.
    review_denied_audit_per_s: Annotated[
        float, Field(gt=0, validation_alias=_env("GUARDSTREAM_REVIEW_DENIED_AUDIT_PER_S"))
    ] = 10.0

    # --- feedback loop (guardstream.feedback) ----------------------------------------------
    # Root of the review archive (dated JSONL) and of the training runs' adapters and cards.
    feedback_dir: Annotated[Path, Field(validation_alias=_env("GUARDSTREAM_FEEDBACK_DIR"))] = (
        Path.home() / ".local" / "share" / "guardstream" / "feedback"
    )
    # Training starts when this many curated samples were reviewed since the last run.
    feedback_min_samples: Annotated[
        int, Field(ge=1, validation_alias=_env("GUARDSTREAM_FEEDBACK_MIN_SAMPLES"))
    ] = 500
    # Curation keeps samples the model was less sure of than this (or got wrong).
    feedback_confidence_below: Annotated[
        float, Field(gt=0, le=1, validation_alias=_env("GUARDSTREAM_FEEDBACK_CONFIDENCE_BELOW"))
    ] = 0.85
    # Comma-separated terms that mark an expert reason (weight 2x); empty: the built-in list.
    feedback_expert_terms: Annotated[
        str, Field(validation_alias=_env("GUARDSTREAM_FEEDBACK_EXPERT_TERMS"))
    ] = ""
    # Confident agreements replayed per curated sample against forgetting (see curation).
    feedback_anchor_ratio: Annotated[
        float, Field(ge=0, validation_alias=_env("GUARDSTREAM_FEEDBACK_ANCHOR_RATIO"))
    ] = 1.0
    # A small model (hub id, path or `tiny`) that prescreens curated labels: when it confidently
    # contradicts the human label, the sample is held for a senior instead of trained on.
    # Unset: no prescreen. It must not be the serving model, which disagrees by definition.
    feedback_prescreen_model: Annotated[
        str | None, Field(validation_alias=_env("GUARDSTREAM_FEEDBACK_PRESCREEN_MODEL"))
    ] = None
    # A candidate adapter must beat the serving one by this much held-out accuracy.
    feedback_promotion_margin: Annotated[
        float, Field(ge=0, le=1, validation_alias=_env("GUARDSTREAM_FEEDBACK_PROMOTION_MARGIN"))
    ] = 0.02
    # A candidate that passed the held-out gate shadows live traffic; the shadow evaluation
    # (`guardstream feedback run` / `shadow-report`) judges it once it has this many
    # shadow-scored content keys …
    feedback_shadow_min_samples: Annotated[
        int, Field(ge=1, validation_alias=_env("GUARDSTREAM_FEEDBACK_SHADOW_MIN_SAMPLES"))
    ] = 200
    # … of which at least this many have a later human label.
    feedback_shadow_min_labelled: Annotated[
        int, Field(ge=1, validation_alias=_env("GUARDSTREAM_FEEDBACK_SHADOW_MIN_LABELLED"))
    ] = 30
    # It is promoted when its accuracy against those labels beats the serving adapter's by
    # GUARDSTREAM_FEEDBACK_PROMOTION_MARGIN and its false-positive rate is at most this much
    # above the serving adapter's; otherwise it is retired.
    feedback_shadow_fpr_tolerance: Annotated[
        float,
        Field(ge=0, le=1, validation_alias=_env("GUARDSTREAM_FEEDBACK_SHADOW_FPR_TOLERANCE")),
    ] = 0.02
    # A candidate without enough shadow evidence after this many days is retired.
    feedback_shadow_window_days: Annotated[
        float, Field(gt=0, validation_alias=_env("GUARDSTREAM_FEEDBACK_SHADOW_WINDOW_DAYS"))
    ] = 14.0
    # LoRA optimiser steps; unset: 3 epochs over the training set.
    feedback_train_steps: Annotated[
        int | None, Field(ge=1, validation_alias=_env("GUARDSTREAM_FEEDBACK_TRAIN_STEPS"))
    ] = None
    feedback_learning_rate: Annotated[
        float, Field(gt=0, validation_alias=_env("GUARDSTREAM_FEEDBACK_LEARNING_RATE"))
    ] = 2e-4
    # QA audits: reviewers whose agreement with senior re-reviews is below this raise an alert.
    qa_agreement_min: Annotated[
        float, Field(ge=0, le=1, validation_alias=_env("GUARDSTREAM_QA_AGREEMENT_MIN"))
    ] = 0.9
    # QA audit cadence: the review process samples each finished month (or ISO week) once.
    qa_cadence: Annotated[
        Literal["monthly", "weekly"], Field(validation_alias=_env("GUARDSTREAM_QA_CADENCE"))
    ] = "monthly"
    # First reviews per period put in the seniors' QA queue; 0 = no automatic sampling.
    qa_sample_size: Annotated[
        int, Field(ge=0, le=10_000, validation_alias=_env("GUARDSTREAM_QA_SAMPLE_SIZE"))
    ] = 100
    # --- telemetry (guardstream.runtime.telemetry) ----------------------------------------------
    # Prometheus exposition (`/metrics`) on this port; 0 = not served.
    metrics_port: Annotated[
        int, Field(ge=0, le=65535, validation_alias=_env("GUARDSTREAM_METRICS_PORT"))
    ] = 0
    # OTLP/HTTP collector base URL (traces to /v1/traces, metrics to /v1/metrics); unset = off.
    otlp_endpoint: Annotated[
        str | None, Field(validation_alias=_env("OTEL_EXPORTER_OTLP_ENDPOINT"))
    ] = None
    # Extra OTLP request headers, `k1=v1,k2=v2` (often an auth token: secret).
    otlp_headers: Annotated[
        SecretStr | None, Field(validation_alias=_env("OTEL_EXPORTER_OTLP_HEADERS"))
    ] = None
    # How often metrics are pushed over OTLP (the Prometheus endpoint is pulled instead).
    otlp_metrics_interval_ms: Annotated[
        int, Field(ge=100, validation_alias=_env("OTEL_METRIC_EXPORT_INTERVAL"))
    ] = 15_000
    # Fraction of new traces recorded; a post whose producer sampled it is always recorded.
    trace_sample_ratio: Annotated[
        float, Field(ge=0, le=1, validation_alias=_env("GUARDSTREAM_TRACE_SAMPLE_RATIO"))
    ] = 1.0
    # Deployment name shown as `deployment.environment` on every span and `target_info`.
    environment: Annotated[str, Field(validation_alias=_env("GUARDSTREAM_ENVIRONMENT"))] = "local"

    # --- SLA timer (guardstream sla) ---------------------------------------------------------
    # How often the timer looks for due items: downgrades fire at most this much (plus the time
    # a tick takes) after their deadline while the worker runs.
    sla_tick_s: Annotated[
        float, Field(gt=0, le=60, validation_alias=_env("GUARDSTREAM_SLA_TICK_S"))
    ] = 1.0
    # How long a finished item (reviewed or downgraded) stays in the table, so a late or
    # duplicate review is still recognised.
    sla_retain_s: Annotated[int, Field(gt=0, validation_alias=_env("GUARDSTREAM_SLA_RETAIN_S"))] = (
        7 * 24 * 3600
    )
    # The average review response time is the mean over the last this many reviews.
    sla_response_window: Annotated[
        int, Field(ge=1, validation_alias=_env("GUARDSTREAM_SLA_RESPONSE_WINDOW"))
    ] = 200
    # The SLA app's local data directory (faust's datadir, one subdirectory per namespace). The
    # table store itself is in memory and rebuilt from its changelog topic on start.
    sla_data_dir: Annotated[Path, Field(validation_alias=_env("GUARDSTREAM_SLA_DATA_DIR"))] = (
        Path.home() / ".local" / "share" / "guardstream" / "sla"
    )
    # Group session timeout of the SLA app: how soon a killed worker's partitions move on.
    sla_session_timeout_s: Annotated[
        float, Field(ge=6, validation_alias=_env("GUARDSTREAM_SLA_SESSION_TIMEOUT_S"))
    ] = 10.0

    @field_validator("namespace")
    @classmethod
    def _check_namespace(cls, value: str) -> str:
        if value and not _NAMESPACE.match(value):
            raise ValueError("namespace: lowercase letters, digits, '-' and '_' (max 41)")
        return value

    @field_validator("review_forwarded_allow_ips")
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
                    f"review_forwarded_allow_ips: {item!r} is not an address, a network or '*'"
                ) from None
        return value

    @cached_property
    def cache_prefix(self) -> str:
        """Redis key prefix; the namespace keeps tests and tenants of a shared Redis apart."""
        return f"gs:{self.namespace}:" if self.namespace else "gs:"

    def group_id(self, process: str) -> str:
        base = f"guardstream-{process}"
        return f"{self.namespace}.{base}" if self.namespace else base

    def public_view(self) -> dict[str, object]:
        """What a process logs at start-up: every setting, secrets and URL credentials masked."""
        return {name: masked(getattr(self, name)) for name in type(self).model_fields}
