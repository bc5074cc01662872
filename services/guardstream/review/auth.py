"""Credentials of reviewers: password hashes, API tokens, signed console sessions, CSRF.

Passwords are stored as scrypt hashes (n=2^14, r=8, p=1, 16-byte salt). API tokens are 256-bit
random strings; only their SHA-256 is stored (a high-entropy token needs no slow hash). A console
session is a cookie `base64(payload).hmac` signed with the session secret; its payload holds the
reviewer id, the expiry, the CSRF token form posts must echo and a 256-bit session id whose
SHA-256 the store keeps while the session is open (logout and revocation delete it: a signed
cookie alone is never enough). Pure functions, no I/O, except `HashPool`: the server verifies
passwords on a few threads of its own (scrypt releases the GIL), never on the event loop, and
refuses at once (`HashPoolBusy`) when its queue is full.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import orjson

from guardstream.contracts.errors import TransientError

_N, _R, _P = 1 << 14, 8, 1


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return f"scrypt${_N}${_R}${_P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(
            password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), dklen=32
        )
    except ValueError:
        return False
    return hmac.compare_digest(got.hex(), digest)


# Verified instead of a stored hash when the reviewer id is unknown: the same scrypt work, so
# the answer takes as long as for a known id with a wrong password (no id enumeration by time).
UNKNOWN_ID_HASH = f"scrypt${_N}${_R}${_P}${'00' * 16}${'00' * 32}"


class HashPoolBusy(TransientError):
    """Every hashing thread is busy and the queue is full: answered 429 with Retry-After (too
    many logins at once; the server itself is not overloaded)."""


class HashPool:
    """Password checks on `workers` threads, at most `queue` more waiting; past that
    `HashPoolBusy` at once. The bound caps the CPU and the memory (16 MiB a check) logins take."""

    def __init__(
        self,
        workers: int,
        queue: int,
        check: Callable[[str, str], bool] = verify_password,
    ) -> None:
        self._check = check
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="review-scrypt")
        self._slots = workers + queue
        self.pending = 0

    async def verify(self, password: str, stored: str | None) -> bool:
        """`verify_password` off the event loop; `stored=None` (unknown id) is hashed against
        `UNKNOWN_ID_HASH` and is never a match."""
        if self.pending >= self._slots:
            raise HashPoolBusy
        self.pending += 1
        try:
            loop = asyncio.get_running_loop()
            target = UNKNOWN_ID_HASH if stored is None else stored
            ok = await loop.run_in_executor(self._executor, self._check, password, target)
        finally:
            self.pending -= 1
        return ok and stored is not None

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def new_token() -> str:
    return "gsr_" + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Session:
    reviewer: str
    expires: int  # unix seconds
    csrf: str
    sid: str  # the server-side session's id (the store keeps its hash)


def _sign(key: bytes, body: bytes) -> str:
    return base64.urlsafe_b64encode(hmac.new(key, body, hashlib.sha256).digest()).decode()


def issue_session(key: bytes, reviewer: str, now: float, ttl_s: int) -> tuple[str, Session]:
    session = Session(
        reviewer, int(now) + ttl_s, secrets.token_urlsafe(24), secrets.token_urlsafe(32)
    )
    body = base64.urlsafe_b64encode(
        orjson.dumps(
            {"r": session.reviewer, "e": session.expires, "c": session.csrf, "s": session.sid}
        )
    )
    return f"{body.decode()}.{_sign(key, body)}", session


def read_session(key: bytes, cookie: str | None, now: float) -> Session | None:
    """The session a cookie carries, or None when it is missing, tampered with or expired
    (whether it is still open is the store's to say)."""
    if not cookie or "." not in cookie:
        return None
    body, _, signature = cookie.rpartition(".")
    if not hmac.compare_digest(_sign(key, body.encode()), signature):
        return None
    try:
        data = orjson.loads(base64.urlsafe_b64decode(body.encode()))
        session = Session(str(data["r"]), int(data["e"]), str(data["c"]), str(data["s"]))
    except (ValueError, KeyError, TypeError):
        return None
    return session if session.expires > now else None


def csrf_ok(session: Session, submitted: str | None) -> bool:
    return bool(submitted) and hmac.compare_digest(session.csrf, submitted or "")
