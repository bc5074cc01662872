"""`guardstream doctor`: is this deployment able to run, and if not, what exactly is wrong?

Each check talks to the real thing the processes will use (broker, topics, Redis, PostgreSQL,
model files, policy packs), with the same settings, and says in plain words what it found and
how to fix it. Nothing is created, downloaded or started: a missing topic is reported, never
auto-created (doctor describes only topics that exist, because a metadata request for an
unknown topic creates it on brokers with auto-creation on), and the model's config, tokenizer
and chat template are read from local files only; vLLM is not started. Secrets never appear:
every URL is shown through `mask_url` (credentials masked wherever they are), error texts are
scrubbed of every secret value, and a URL that does not parse is a failed check in words that
quote none of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaConnectionError
from pydantic import SecretStr
from redis.exceptions import AuthenticationError, ReadOnlyError, RedisError, ResponseError

from guardstream.contracts.labels import LABELS
from guardstream.contracts.topics import CATALOGUE, TopicNames
from guardstream.model.guard import TINY_MODEL
from guardstream.model.tiny import MANIFEST_NAME, TINY_BUILDER_VERSION
from guardstream.policy import (
    PACKS_DIR,
    PolicyConflictError,
    PolicyLoadError,
    load_registry,
)
from guardstream.runtime.kafka import client_kwargs
from guardstream.runtime.redisstore import redis_client
from guardstream.runtime.settings import MASK, Settings, mask_url, url_secrets
from guardstream.scorer.prompt import PromptRenderer, TemplateTooLong

BROKER_TIMEOUT_S = 10.0
POSTGRES_TIMEOUT_S = 5.0


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"


@dataclass(frozen=True, slots=True)
class Finding:
    """One line of the report: what was checked, what was found, and how to fix it."""

    check: str
    status: Status
    detail: str
    hint: str = ""

    def as_dict(self) -> dict[str, str]:
        return {**asdict(self), "status": self.status.value}


def ok(check: str, detail: str) -> Finding:
    return Finding(check, Status.OK, detail)


def warn(check: str, detail: str, hint: str = "") -> Finding:
    return Finding(check, Status.WARN, detail, hint)


def fail(check: str, detail: str, hint: str) -> Finding:
    return Finding(check, Status.FAIL, detail, hint)


def secrets_of(settings: Settings) -> list[str]:
    """Every secret value (and the credentials inside secret URLs) output must not contain."""
    values: list[str] = []
    for value in settings.flat().values():
        if isinstance(value, SecretStr):
            text = value.get_secret_value()
            values += [text, *url_secrets(text)]
        elif isinstance(value, str):
            values += url_secrets(value)
    return [v for v in values if len(v) >= 3]


def scrub(text: str, settings: Settings) -> str:
    """`text` with every secret of `settings` replaced (URLs masked first, then the rest)."""
    for secret in sorted(secrets_of(settings), key=len, reverse=True):
        text = text.replace(secret, mask_url(secret) if "://" in secret else MASK)
    return text


def url_problem(url: str, schemes: tuple[str, ...]) -> str | None:
    """Why `url` cannot be a URL of `schemes`, in words that quote none of it; None if it can.

    Drivers' own parse errors quote the part they choke on, which may be a piece of a
    password (`redis://:pa/ss@host` reads as port `pa`): these checks answer first."""
    try:
        parts = urlsplit(url)
        _ = parts.port, parts.hostname
    except ValueError:
        return "does not parse (a port that is not a number in 0-65535, or a bad [IPv6] host)"
    if parts.scheme not in schemes:
        return f"the scheme must be one of {', '.join(s + '://' for s in schemes)}"
    return None


def _error(exc: BaseException, settings: Settings) -> str:
    message = str(exc).strip()
    name = type(exc).__name__
    return scrub(f"{name}: {message}" if message else name, settings)


# --- broker and topics ------------------------------------------------------------------------

_AUTH_ERRORS = (
    "SaslAuthenticationFailed",
    "AuthenticationFailedError",
    "AuthenticationMethodNotSupported",
    "UnsupportedSaslMechanismError",
    "IllegalSaslStateError",
    "ClusterAuthorizationFailedError",
    "TopicAuthorizationFailedError",
)


async def check_broker(settings: Settings) -> list[Finding]:
    """Broker reachable (and authenticated), then every catalogue topic with its partitions."""

    where = f"{settings.kafka.bootstrap} ({settings.kafka.security_protocol})"
    admin = AIOKafkaAdminClient(
        **client_kwargs(settings),
        client_id="guardstream-doctor",
        request_timeout_ms=int(BROKER_TIMEOUT_S * 1000),
    )
    try:
        async with asyncio.timeout(BROKER_TIMEOUT_S):
            await admin.start()
            existing = set(await admin.list_topics())
            cluster = await admin.describe_cluster()
            brokers = len(cluster.get("brokers", ()))
    except Exception as exc:  # noqa: BLE001 - every failure is reported, none raised
        await _close_quietly(admin)
        return [
            _broker_failure(await _probe_cause(exc, settings), where, settings),
            warn("topics", "not checked: the broker did not answer"),
        ]
    try:
        findings = [ok("broker", f"{where} reachable, {brokers} broker(s)")]
        findings += await _check_topics(admin, existing, settings)
    except Exception as exc:  # noqa: BLE001
        findings.append(
            fail("topics", f"could not describe topics: {_error(exc, settings)}", _RETRY_HINT)
        )
    finally:
        await _close_quietly(admin)
    return findings


_RETRY_HINT = "the broker answered the connection but not this request; check its logs"


async def _probe_cause(exc: BaseException, settings: Settings) -> BaseException:
    """The bootstrap error hides its cause (an auth failure reads "Unable to bootstrap"):
    open one connection to the first bootstrap address by hand to see the real error."""

    if not isinstance(exc, KafkaConnectionError):
        return exc
    unexplained: BaseException = exc
    kwargs = client_kwargs(settings)
    host, _, port = kwargs.pop("bootstrap_servers").split(",")[0].strip().rpartition(":")
    try:
        async with asyncio.timeout(BROKER_TIMEOUT_S):
            conn = await create_conn(
                host or port, int(port) if host else 9092, client_id="guardstream-doctor", **kwargs
            )
        conn.close()
    except Exception as cause:  # noqa: BLE001 - this is the error we are looking for
        return cause
    return unexplained


def _broker_failure(exc: BaseException, where: str, settings: Settings) -> Finding:
    name = type(exc).__name__
    if name in _AUTH_ERRORS or "sasl" in name.lower() or "auth" in name.lower():
        return fail(
            "broker",
            f"{where}: authentication rejected ({_error(exc, settings)})",
            "check KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME and "
            "KAFKA_SASL_PASSWORD against the broker's listener",
        )
    if isinstance(exc, TimeoutError):
        reason = f"no answer within {BROKER_TIMEOUT_S:g} s"
    else:
        reason = f"not reachable ({_error(exc, settings)})"
    return fail(
        "broker",
        f"{where}: {reason}",
        "is the broker running and KAFKA_BOOTSTRAP its advertised host:port? "
        "(locally: `guardstream stack up` or `make up`)",
    )


async def _check_topics(admin: Any, existing: set[str], settings: Settings) -> list[Finding]:
    names = TopicNames(settings.namespace)
    present = [spec for spec in CATALOGUE if names[spec.topic] in existing]
    missing = [names[spec.topic] for spec in CATALOGUE if names[spec.topic] not in existing]
    counts: dict[str, int] = {}
    thin: list[str] = []
    if present:
        described = await admin.describe_topics([names[spec.topic] for spec in present])
        counts = {d["topic"]: len(d["partitions"]) for d in described}
        replicas = {
            d["topic"]: min((len(p.get("replicas", ())) for p in d["partitions"]), default=0)
            for d in described
        }
        thin = sorted(t for t, n in replicas.items() if n < settings.kafka.topic_replication)
    findings: list[Finding] = []
    ns = f"GUARDSTREAM_NAMESPACE={settings.namespace} " if settings.namespace else ""
    if missing:
        findings.append(
            fail(
                "topics",
                f"{len(missing)} of {len(CATALOGUE)} catalogue topics missing: "
                + ", ".join(missing),
                f"run `{ns}guardstream topics create` (creates only what is missing)",
            )
        )
    for spec in present:
        name = names[spec.topic]
        actual = counts.get(name)
        if actual == spec.partitions:
            continue
        if actual is not None and actual < spec.partitions:
            how = (
                f"add partitions: `kafka-topics.sh --alter --topic {name} --partitions "
                f"{spec.partitions}` (keys move to other partitions: drain the topic first)"
            )
        else:
            how = (
                "Kafka cannot remove partitions: drain the topic, delete it and run "
                f"`{ns}guardstream topics create`"
            )
        findings.append(
            fail(
                "topics",
                f"{name} has {actual} partitions, the catalogue says {spec.partitions} "
                f"(keyed by {spec.key}; co-partitioned topics must agree)",
                how,
            )
        )
    if present and thin:
        findings.append(
            warn(
                "topics",
                f"{len(thin)} topic(s) have fewer replicas than GUARDSTREAM_TOPIC_REPLICATION="
                f"{settings.kafka.topic_replication}: {', '.join(thin)}",
                "a broker loss can lose decisions: raise their replication factor "
                "(kafka-reassign-partitions.sh)",
            )
        )
    if not findings:
        findings.append(
            ok("topics", f"all {len(CATALOGUE)} catalogue topics exist with their partitions")
        )
    return findings


async def _close_quietly(admin: Any) -> None:
    try:
        await admin.close()
    except Exception:  # noqa: BLE001, S110 - a half-started client may fail to close; nothing to do
        pass


# --- Redis ------------------------------------------------------------------------------------

_REDIS_URL_HINT = (
    "REDIS_URL must read redis://[user:password@]host:port/db (rediss:// for TLS, unix:///path "
    "for a socket); percent-encode `@ : / ? #` inside a password"
)


async def check_redis(settings: Settings) -> Finding:
    """PING, then a write, a read and a delete of a scratch key, each within the cache timeout."""

    url = mask_url(settings.redis.url.get_secret_value())
    problem = url_problem(settings.redis.url.get_secret_value(), ("redis", "rediss", "unix"))
    client = None
    if problem is None:
        try:
            client = redis_client(settings)
        except Exception as exc:  # noqa: BLE001 - its message may quote a piece of the URL
            problem = f"is not a usable Redis URL ({type(exc).__name__})"
    if client is None:
        return fail("redis", f"REDIS_URL {url}: {problem}", _REDIS_URL_HINT)
    budget_ms = settings.redis.timeout_ms
    key = f"{settings.cache_prefix}doctor:{uuid.uuid4().hex}"
    slowest = 0.0
    try:
        for step in ("ping", "write", "read", "delete"):
            started = time.monotonic()
            async with asyncio.timeout(budget_ms / 1000):
                if step == "ping":
                    await client.ping()
                elif step == "write":
                    await client.set(key, b"1", px=60_000)
                elif step == "read":
                    if await client.get(key) != b"1":
                        return fail(
                            "redis",
                            f"{url}: wrote a key but read back something else",
                            "another client rewrites keys under GUARDSTREAM_NAMESPACE's "
                            "prefix, or this is a proxy that does not keep writes",
                        )
                else:
                    await client.delete(key)
            if step != "ping":  # the ping includes connecting; lookups reuse the connection
                slowest = max(slowest, time.monotonic() - started)
    except ReadOnlyError as exc:  # a ResponseError: before it
        return fail(
            "redis",
            f"{url}: not writable ({_error(exc, settings)})",
            "REDIS_URL points at a read-only replica: point it at the primary",
        )
    except (AuthenticationError, ResponseError) as exc:
        if isinstance(exc, AuthenticationError) or "AUTH" in str(exc).upper():
            return fail(
                "redis",
                f"{url}: authentication rejected ({_error(exc, settings)})",
                "check the user and password in REDIS_URL against the server's ACL",
            )
        return fail("redis", f"{url}: {_error(exc, settings)}", "see the Redis server log")
    except TimeoutError:
        return fail(
            "redis",
            f"{url}: no answer within GUARDSTREAM_CACHE_TIMEOUT_MS={budget_ms} ms",
            "every cache lookup would fail open (re-scored): check Redis load and network "
            "latency, or raise GUARDSTREAM_CACHE_TIMEOUT_MS",
        )
    except (RedisError, OSError) as exc:
        return fail(
            "redis",
            f"{url}: not reachable ({_error(exc, settings)})",
            "is Redis running and REDIS_URL its host:port/db? "
            "(without it every post is scored again: the pipeline runs, slower)",
        )
    except Exception as exc:  # noqa: BLE001 - e.g. a URL option the client does not know
        return fail("redis", f"{url}: {_error(exc, settings)}", _REDIS_URL_HINT)
    finally:
        await client.aclose()
    if slowest > budget_ms / 2000:
        return warn(
            "redis",
            f"{url}: reachable and writable, but one call took {slowest * 1000:.0f} ms of a "
            f"{budget_ms} ms budget",
            "lookups close to GUARDSTREAM_CACHE_TIMEOUT_MS will often fail open",
        )
    return ok("redis", f"{url}: reachable and writable (slowest call {slowest * 1000:.1f} ms)")


# --- PostgreSQL -------------------------------------------------------------------------------


async def check_postgres(settings: Settings) -> Finding:
    """Connect with DATABASE_URL and run `select 1` (asyncpg, the review store's driver)."""
    url = mask_url(settings.database.url.get_secret_value())
    problem = url_problem(settings.database.url.get_secret_value(), ("postgresql", "postgres"))
    if problem is not None:
        return fail(
            "postgresql",
            f"DATABASE_URL {url}: {problem}",
            "DATABASE_URL must read postgresql://user:password@host:port/db; percent-encode "
            "`@ : / ? #` inside a password",
        )
    try:
        async with asyncio.timeout(POSTGRES_TIMEOUT_S):
            conn = await asyncpg.connect(settings.database.url.get_secret_value())
            try:
                version = await conn.fetchval("show server_version")
                await conn.fetchval("select 1")
            finally:
                await conn.close()
    except TimeoutError:
        return fail(
            "postgresql",
            f"{url}: no answer within {POSTGRES_TIMEOUT_S:g} s",
            "is PostgreSQL running and DATABASE_URL its host:port?",
        )
    except (
        asyncpg.InvalidPasswordError,
        asyncpg.InvalidAuthorizationSpecificationError,
    ) as exc:
        return fail(
            "postgresql",
            f"{url}: authentication rejected ({_error(exc, settings)})",
            "check the user and password in DATABASE_URL (and pg_hba.conf)",
        )
    except asyncpg.InvalidCatalogNameError as exc:
        return fail(
            "postgresql",
            f"{url}: {_error(exc, settings)}",
            "create the database (`createdb NAME`) or fix the database name in DATABASE_URL",
        )
    except (asyncpg.PostgresError, OSError, ValueError) as exc:
        return fail(
            "postgresql",
            f"{url}: not reachable ({_error(exc, settings)})",
            "is PostgreSQL running and DATABASE_URL postgresql://user:password@host:port/db?",
        )
    return ok("postgresql", f"{url}: reachable (server {version})")


# --- model ------------------------------------------------------------------------------------


def _looks_like_path(model: str) -> bool:
    return (
        model.startswith(("/", "./", "../", "~")) or model.count("/") != 1 or Path(model).exists()
    )


def check_model(settings: Settings) -> Finding:
    """The model resolves to local files whose config, tokenizer and chat template load and
    leave room for input in the configured window. Nothing is downloaded; vLLM is not started."""

    if settings.model.name == TINY_MODEL:
        path = Path(settings.model.cache_dir) / f"tiny-{TINY_BUILDER_VERSION}"
        if not (path / MANIFEST_NAME).is_file():
            return warn(
                "model",
                f"tiny test checkpoint not built yet at {path}",
                "the scorer builds it on first start (~25 s); or: `guardstream model build-tiny`",
            )
        source = str(path)
    elif _looks_like_path(settings.model.name):
        path = Path(settings.model.name).expanduser()
        if not path.is_dir():
            return fail(
                "model",
                f"GUARDSTREAM_MODEL={settings.model.name}: no such directory",
                "point GUARDSTREAM_MODEL at a directory holding Qwen3Guard-Gen weights "
                "(config.json, tokenizer, chat template), or a hub id such as "
                "Qwen/Qwen3Guard-Gen-0.6B; GUARDSTREAM_MODEL=tiny for the offline test model",
            )
        source = str(path)
    else:
        source = settings.model.name
    try:
        # lazy: transformers only when a model checkpoint is checked
        from transformers import AutoConfig, AutoTokenizer
    except ImportError:
        return warn(
            "model",
            f"{settings.model.name}: skipped: transformers is not installed here",
            "only the scorer needs the model; run doctor in the scorer's image to check it",
        )
    return _load_model_files(settings, source, AutoConfig, AutoTokenizer)


def _load_model_files(settings: Settings, source: str, auto_config: Any, auto_tok: Any) -> Finding:

    hub = not Path(source).is_dir()
    try:
        config = auto_config.from_pretrained(source, local_files_only=True)
        tokenizer = auto_tok.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        if hub:
            return warn(
                "model",
                f"{source}: not in the local Hugging Face cache",
                "the scorer downloads it at start when the hub is reachable; offline, download "
                f"it beforehand (`hf download {source}`) or set GUARDSTREAM_MODEL to a directory",
            )
        return fail(
            "model",
            f"{source}: config or tokenizer does not load ({_error(exc, settings)})",
            "the directory must hold a complete Hugging Face checkpoint "
            "(config.json, tokenizer files, chat template)",
        )
    if not getattr(tokenizer, "chat_template", None):
        return fail(
            "model",
            f"{source}: the tokenizer has no chat template",
            "Qwen3Guard-Gen carries its moderation instructions in its chat template: use the "
            "original tokenizer_config.json / chat_template.jinja",
        )
    try:
        PromptRenderer(tokenizer, settings.engine.max_model_len - settings.engine.max_output_tokens)
    except TemplateTooLong as exc:
        return fail("model", f"{source}: {exc}", "raise GUARDSTREAM_MAX_MODEL_LEN")
    except Exception as exc:  # noqa: BLE001 - a broken template fails in many ways
        return fail(
            "model",
            f"{source}: the chat template does not render ({_error(exc, settings)})",
            "use the checkpoint's original chat template",
        )
    firsts = {
        tuple(tokenizer.encode(" " + label, add_special_tokens=False)[:1]) for label in LABELS
    }
    if len(firsts) != len(LABELS) or () in firsts:
        return fail(
            "model",
            f"{source}: the labels {', '.join(LABELS)} do not start with distinct tokens",
            "this tokenizer is not Qwen3Guard-Gen's; confidence cannot be read from it",
        )
    window = getattr(config, "max_position_embeddings", None)
    if isinstance(window, int) and window < settings.engine.max_model_len:
        return fail(
            "model",
            f"{source}: GUARDSTREAM_MAX_MODEL_LEN={settings.engine.max_model_len} exceeds the "
            f"model's {window} positions",
            f"set GUARDSTREAM_MAX_MODEL_LEN to at most {window}",
        )
    kind = getattr(config, "model_type", "?")
    return ok("model", f"{source}: {kind} config, tokenizer and chat template load")


# --- policy packs -----------------------------------------------------------------------------


def check_policies(settings: Settings) -> Finding:

    where = str(settings.policy.dir or f"{PACKS_DIR} (shipped)")
    try:
        registry = load_registry(settings.policy.dir)
    except (PolicyLoadError, PolicyConflictError) as exc:
        return fail(
            "policy",
            f"{where}: {exc}",
            "fix the files named above (format: schemas/policy-pack.v1.json), or unset "
            "GUARDSTREAM_POLICY_DIR to use the shipped packs",
        )
    packs = sorted(f"{p.id}@{p.version}" for p in registry.packs)
    return ok("policy", f"{where}: {len(packs)} pack(s) valid: {', '.join(packs)}")


# --- the moderation API and the scorer's interactive door ----------------------------------------
API_TIMEOUT_S = 3.0
API_TITLE = "guardstream moderation API"  # api.app's FastAPI title
DOOR_PATH = "/v1/score"  # scorer.door.SCORE_PATH (doctor sits above the scorer's layer too)
_ANY_ADDRESS = {"", "0.0.0.0", "::"}  # noqa: S104  # addresses to connect to loopback for


def _api_base(settings: Settings) -> str:
    """Where this machine reaches the API: its own address, loopback for a wildcard one."""
    host = settings.api.host
    host = "127.0.0.1" if host in _ANY_ADDRESS else host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{settings.api.port}"


async def _get(client: httpx.AsyncClient, url: str) -> httpx.Response | str:
    """The response, or why there is none (in words that quote no secret)."""
    try:
        return await client.get(url)
    except httpx.TimeoutException:
        return f"no answer within {API_TIMEOUT_S:g} s"
    except httpx.HTTPError as exc:
        return f"not reachable ({type(exc).__name__})"


async def _check_api_process(client: httpx.AsyncClient, base: str) -> Finding:
    answer = await _get(client, f"{base}/openapi.json")
    if isinstance(answer, str):
        return warn(
            "api",
            f"{base}: {answer}: the moderation API is not running (yet?)",
            "start it (`guardstream api`, or `make up`); GUARDSTREAM_API_HOST / "
            "GUARDSTREAM_API_PORT say where it listens",
        )
    title = None
    if answer.status_code == 200:
        with contextlib.suppress(ValueError, AttributeError, TypeError):
            title = answer.json().get("info", {}).get("title")
    if title != API_TITLE:
        return fail(
            "api",
            f"{base} answers (HTTP {answer.status_code}), but not as the moderation API",
            "another service holds GUARDSTREAM_API_PORT: stop it or move the API to a free port",
        )
    return ok("api", f"{base}: the moderation API answers")


async def _check_door(client: httpx.AsyncClient, settings: Settings, api_running: bool) -> Finding:
    raw = settings.api.scorer_url
    shown = mask_url(raw)
    problem = url_problem(raw, ("http", "https"))
    if problem is not None:
        return fail("scorer door", f"GUARDSTREAM_API_SCORER_URL {problem}", _DOOR_HINT)
    parts = urlsplit(raw)
    door_port = settings.scorer.interactive_port
    local = parts.hostname in {"127.0.0.1", "localhost", "::1"}
    if local and door_port and parts.port not in (None, door_port):
        return fail(
            "scorer door",
            f"GUARDSTREAM_API_SCORER_URL ({shown}) names port {parts.port}, but "
            f"GUARDSTREAM_SCORER_INTERACTIVE_PORT is {door_port}",
            _DOOR_HINT,
        )
    answer = await _get(client, raw.rstrip("/") + DOOR_PATH)
    if isinstance(answer, str):
        detail = f"{shown}: {answer}"
        if api_running:  # every cache miss is answered 503 meanwhile
            return fail("scorer door", f"{detail}; the API answers cache misses 503", _DOOR_HINT)
        return warn("scorer door", f"{detail}: the scorer is not running (yet?)", _DOOR_HINT)
    # The door routes POST only: a GET of its path is a 405 from it, a 404 from anything else.
    if answer.status_code != 405:
        return fail(
            "scorer door",
            f"{shown} answers HTTP {answer.status_code} for {DOOR_PATH}: not the scorer's door",
            _DOOR_HINT,
        )
    return ok("scorer door", f"{shown}: the scorer's interactive door answers")


_DOOR_HINT = (
    "point GUARDSTREAM_API_SCORER_URL at the scorer's interactive door: its host and "
    "GUARDSTREAM_SCORER_INTERACTIVE_PORT (0 turns the door off); in containers the scorer "
    "needs GUARDSTREAM_SCORER_INTERACTIVE_HOST=0.0.0.0"
)


async def check_api(settings: Settings) -> list[Finding]:
    """The moderation API on its port, and the scorer's interactive door it calls (nothing is
    moderated: GET of the OpenAPI document, GET of the door's POST-only path). Not running is a
    warning (doctor runs before `make up` too); a door the running API cannot reach, or another
    service on either port, fails."""
    async with httpx.AsyncClient(timeout=API_TIMEOUT_S, trust_env=False) as client:
        api = await _check_api_process(client, _api_base(settings))
        door = await _check_door(client, settings, api.status is Status.OK)
    return [api, door]


# --- the whole report -------------------------------------------------------------------------


async def diagnose(settings: Settings) -> list[Finding]:
    """Every check; findings in a fixed order (broker, topics, redis, postgresql, model, policy,
    api, scorer door).

    Redis is timed against the cache timeout, so it runs first and alone: loading the
    tokenizer in a thread beside it would hold the interpreter lock and slow its event loop."""
    redis = await check_redis(settings)
    broker, postgres = await asyncio.gather(check_broker(settings), check_postgres(settings))
    model = await asyncio.to_thread(check_model, settings)
    policy = await asyncio.to_thread(check_policies, settings)
    api = await check_api(settings)
    return [*broker, redis, postgres, model, policy, *api]


def healthy(findings: list[Finding]) -> bool:
    return all(f.status is not Status.FAIL for f in findings)


def render_text(findings: list[Finding]) -> str:
    width = max(len(f.check) for f in findings)
    lines: list[str] = []
    for f in findings:
        first, *more = f.detail.splitlines() or [""]
        lines.append(f"{f.status.value:<4}  {f.check:<{width}}  {first}")
        lines.extend(f"{'':<4}  {'':<{width}}  {line.strip()}" for line in more)
        if f.hint:
            lines.append(f"{'':<4}  {'':<{width}}  fix: {f.hint}")
    failed = sum(f.status is Status.FAIL for f in findings)
    warned = sum(f.status is Status.WARN for f in findings)
    lines.append(
        f"{failed} failed, {warned} warning(s)" if failed or warned else "all checks passed"
    )
    return "\n".join(lines)


def report(settings: Settings, findings: list[Finding]) -> dict[str, Any]:
    """The `--json` object: the verdict, every finding, and the settings checked (redacted)."""
    view = settings.public_view()
    checked = (
        "namespace",
        "kafka.bootstrap",
        "kafka.security_protocol",
        "redis.url",
        "redis.timeout_ms",
        "database.url",
        "model.name",
        "engine.max_model_len",
        "policy.dir",
        "api.host",
        "api.port",
        "api.scorer_url",
    )
    return {
        "ok": healthy(findings),
        "checks": [f.as_dict() for f in findings],
        "settings": {name: view[name] for name in checked},
    }
