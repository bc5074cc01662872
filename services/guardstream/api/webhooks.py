"""Decision callbacks, the pure part: how a delivery is signed, when a failed one is tried
again, and which URLs a tenant may register (no I/O here; `api.delivery` sends).

Signature (Stripe-like): `X-Guardstream-Signature: t=<unix seconds>,v1=<hex>` where `<hex>` is
HMAC-SHA256 keyed with the tenant's secret (its UTF-8 bytes, `whsec_` prefix included) over
`<t>.` followed by the raw body. A receiver recomputes it, compares in constant time and
refuses a `t` too far from its clock (a replayed request).

URL rule (SSRF): `http`/`https` only, a host, no user info, no fragment, printable ASCII after
IDNA, and unless `GUARDSTREAM_WEBHOOK_ALLOW_PRIVATE` no address that is not global (loopback,
private, link-local such as cloud metadata, shared, reserved, multicast, unspecified, and the
IPv4 ones spelt in IPv6) whether written as an address, in a legacy numeric form (`127.1`,
`0x7f000001`) or named `localhost`. Names are resolved and judged again before every POST
(`address_problem`), and the POST goes to the address judged (`pinned`): a name that
resolves elsewhere a moment later (DNS rebinding) changes nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import random
import secrets
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from guardstream.contracts.events import allowed_characters

SIGNATURE_HEADER = "X-Guardstream-Signature"
EVENT_ID_HEADER = "X-Guardstream-Event-Id"
SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, no secret)
SECRET_BYTES = 32  # 256 bits of randomness
MAX_URL_CHARS = 2048
SCHEMES = ("http", "https")
TOLERANCE_S = 300  # what the docs advise receivers to accept between `t` and their clock

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def new_secret() -> str:
    """A fresh signing secret for a tenant (shown once, by `guardstream webhooks set`)."""
    return SECRET_PREFIX + secrets.token_urlsafe(SECRET_BYTES)


def signature(secret: str, body: bytes, at: int) -> str:
    """The `X-Guardstream-Signature` value of `body` sent at unix time `at`."""
    mac = hmac.new(secret.encode(), f"{at}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={at},v1={mac}"


def verify(
    secret: str, body: bytes, header: str, now: float, tolerance_s: int = TOLERANCE_S
) -> bool:
    """Whether `header` signs `body` with `secret` within `tolerance_s` of `now` (what a
    receiver does; the docs show the same in ten lines)."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    at = fields.get("t", "")
    if not at.isdigit() or abs(now - int(at)) > tolerance_s:
        return False
    expected = signature(secret, body, int(at)).rpartition("v1=")[2]
    return hmac.compare_digest(expected, fields.get("v1", ""))


def backoff_s(attempt: int, base_s: float, cap_s: float, rng: random.Random | None = None) -> float:
    """The wait after failed try number `attempt` (1 = the first): `base · 2^(attempt-1)`,
    capped at `cap_s`, then jittered to between half and all of it, so the retries of many
    deliveries that failed together (a receiver's outage) do not arrive together."""
    nominal = min(cap_s, base_s * 2.0 ** min(attempt - 1, 64))
    return nominal * (0.5 + 0.5 * (rng or _RNG).random())


_RNG = random.Random()  # noqa: S311 (jitter, not a secret)


def url_problem(url: str, *, allow_private: bool) -> str | None:
    """Why `url` may not be a webhook URL, in words that quote none of it; None if it may."""
    if len(url) > MAX_URL_CHARS:
        return f"a URL has at most {MAX_URL_CHARS} characters"
    if not allowed_characters(url) or not url.isprintable() or any(c.isspace() for c in url):
        return "a URL holds no spaces or control characters"
    try:
        parts = urlsplit(url)
        port = parts.port
        host = parts.hostname
    except ValueError:
        return "the URL does not parse (a bad port or [IPv6] host)"
    if parts.scheme.lower() not in SCHEMES:
        return "the scheme must be http:// or https://"
    if "@" in parts.netloc:
        return "a URL carries no credentials (user info): the signature authenticates"
    if parts.fragment or url.endswith("#"):
        return "a URL has no #fragment"
    if not host:
        return "the URL names no host"
    if port == 0:
        return "port 0 is no port"
    try:
        ascii_host = host if host.isascii() else host.encode("idna").decode("ascii")
    except UnicodeError:
        return "the host name is not a valid internationalised name"
    if not allowed_characters(ascii_host) or not ascii_host.isprintable():
        return "the host name holds forbidden characters"
    if allow_private:
        return None
    address = literal_address(ascii_host.rstrip("."))
    if address is not None:
        return address_problem([address])
    name = ascii_host.rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return "the host is this machine (localhost)"
    return None


def literal_address(host: str) -> IpAddress | None:
    """`host` as an IP address if it is written as one, legacy IPv4 forms included (`127.1`,
    `2130706433`, `0x7f.0.0.1`: C's `inet_aton` reads them so, and so do many resolvers)."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    try:
        packed = socket.inet_aton(host)
    except OSError:
        return None
    return ipaddress.IPv4Address(packed)


def address_problem(addresses: list[IpAddress]) -> str | None:
    """Why a host at `addresses` may not be called (the first that is not global); None if
    every one is global."""
    for address in addresses:
        mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
        judged = mapped or address
        if not judged.is_global or judged.is_multicast:
            return f"the host is at a non-public address ({_kind(judged)})"
    return None


def _kind(address: IpAddress) -> str:
    for name in ("loopback", "link_local", "unspecified", "multicast", "private", "reserved"):
        if getattr(address, f"is_{name}"):
            return name.replace("_", "-")
    return "not global"


@dataclass(frozen=True, slots=True)
class Pinned:
    """A request to a URL, sent to one address of its host."""

    url: str  # the URL with its host replaced by the address
    host: str  # the `Host` header: the URL's own host (and port, when it names one)
    sni: str | None  # https: the name the TLS handshake asks for and the certificate must carry


def pinned(url: str, address: IpAddress) -> Pinned:
    """`url` (one `url_problem` accepted) sent to `address` instead of its host's name."""
    parts = urlsplit(url)
    name = parts.hostname or ""
    ascii_name = name if name.isascii() else name.encode("idna").decode("ascii")
    port = f":{parts.port}" if parts.port is not None else ""
    host = f"[{ascii_name}]" if ":" in ascii_name else ascii_name
    at = f"[{address}]" if address.version == 6 else str(address)
    return Pinned(
        url=urlunsplit((parts.scheme, at + port, parts.path, parts.query, "")),
        host=host + port,
        sni=ascii_name if parts.scheme.lower() == "https" else None,
    )
