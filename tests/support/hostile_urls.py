"""Hypothesis strategies for connection URLs that carry a secret somewhere a driver reads one.

Each example is `(url, secrets)`: a secret sits in the user info (any character, `@ : / ? #`
unencoded included), in a query value under a secret-sounding or arbitrary parameter name,
or in both; host, port, path and the other parameters vary around it. Secrets start and end
with a marker so that finding one in an output is never a coincidence.
"""

from __future__ import annotations

from hypothesis import strategies as st

from guardstream.runtime.settings import SHOWN_QUERY_PARAMS

# Any character an environment variable may hold (no NUL, no lone surrogate).
_ANY = st.characters(codec="utf-8", exclude_characters="\x00")
_WORD = st.text("abcdefghijklmnopqrstuvwxyz0123456789_-.", min_size=1, max_size=10)

SECRET_PARAMS = (
    "password",
    "sslpassword",
    "passwd",
    "pwd",
    "token",
    "access_token",
    "secret",
    "api_key",
    "sig",
    "X-Amz-Signature",
    "auth",
)


def secrets(alphabet: st.SearchStrategy[str] = _ANY) -> st.SearchStrategy[str]:
    return st.text(alphabet, max_size=16).map(lambda s: f"Zq9{s}Xk7")


@st.composite
def url_with_secrets(
    draw: st.DrawFn,
    schemes: tuple[str, ...] = ("redis", "postgresql"),
    hosts: tuple[str, ...] = ("127.0.0.1", "cache", "[::1]", "db.example", "host:abc", "[zz]", ""),
    ports: tuple[str, ...] = ("", ":6379", ":5432", ":99999999", ":"),
) -> tuple[str, list[str]]:
    scheme = draw(st.sampled_from(schemes))
    host = draw(st.sampled_from(hosts))
    port = draw(st.sampled_from(ports))
    path = draw(st.sampled_from(["", "/", "/0", "/db", "/a/b"]))
    place = draw(st.sampled_from(["userinfo", "query", "both"]))
    user = draw(st.sampled_from(["", "guard", "postgres"]))
    hidden: list[str] = []
    userinfo = ""
    if place in ("userinfo", "both"):
        hidden.append(draw(secrets()))
        userinfo = f"{user}:{hidden[-1]}@"
    params: list[str] = draw(
        st.lists(
            st.tuples(st.sampled_from(sorted(SHOWN_QUERY_PARAMS)), _WORD).map("=".join),
            max_size=2,
        )
    )
    if place in ("query", "both"):
        # A value holding `&` or `#` unencoded is another parameter or the fragment to every
        # reader; one holding `@` is read either way (see mask_url).
        hidden.append(draw(secrets(st.characters(codec="utf-8", exclude_characters="\x00&#"))))
        name = draw(st.sampled_from(SECRET_PARAMS) | _WORD.filter(_not_shown))
        params.insert(draw(st.integers(0, len(params))), f"{name}={hidden[-1]}")
    query = "?" + "&".join(params) if params else ""
    return f"{scheme}://{userinfo}{host}{port}{path}{query}", hidden


def _not_shown(name: str) -> bool:
    return name not in SHOWN_QUERY_PARAMS
