"""Erasure on request, end to end on the real broker, Redis, PostgreSQL and the vLLM engine on
the tiny checkpoint: an author's posts (each carrying a marker string) go through triage and
the scorer to review, a reviewer decides them, the relay archives them as feedback samples and
writes the human verdicts to the cache; an adapter trained since then serves the tenant. An
admin's dry run through the review API changes nothing and says what it would remove; hostile
requests are refused with a 4xx. `guardstream erase --author` (a child process, as a user runs
it) then erases the author, and every store - every table of the review schema, every Redis key
of the namespace, every file of the archive, the curated sets, the runs and the receipts - is
searched for the marker, the posts' ids and their content keys and holds none of them; another
author's post is untouched; the receipt names every store; the adapter is marked for
retraining; a second dry run finds nothing left."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from guardstream.contracts.events import Decision, Post, utcnow
from guardstream.contracts.topics import CATALOGUE, Topic
from guardstream.model.adapters import AdapterRegistry
from guardstream.review.erasure import erase_on_request
from guardstream.review.logic import Role, task_id
from guardstream.runtime.redisstore import redis_client
from guardstream.runtime.settings import Settings
from guardstream.scorer.vllm_engine import VllmGuardEngine
from guardstream.verdict.archive import Archive
from guardstream.verdict.erasure import MAX_POSTS, hashed, selector
from tests.integration.cli.conftest import guardstream
from tests.integration.conftest import in_process
from tests.integration.review.conftest import Console, new_test_post, produce, read_topic

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

MARKER = "zqmarker7f3e"
# Taught to the tiny checkpoint as Controversial: each post goes to review.
TEXT = "你怎么看待那场有争议的选举结果?"
REASON = "煽动对立zq"
STORES = {
    "review_db",
    "latest_decisions",
    "decision_journal",
    "feedback_archive",
    "verdict_cache",
    "near_duplicates",
    "adapters",
    "kafka_topics",
    "author_history",
}


async def review_decisions(console: Console, posts: list[Post]) -> list[Decision]:
    wanted = {p.post_id for p in posts}
    for _ in range(120):
        found = {
            raw["post_id"]: Decision.model_validate(raw)
            for raw in await read_topic(console.settings, Topic.REVIEW, len(posts) + 1, within=1)
            if raw["post_id"] in wanted
        }
        if set(found) == wanted:
            return [found[p.post_id] for p in posts]
    raise AssertionError("the posts did not all reach review")


async def everything_in_postgres(console: Console) -> list[str]:
    """Every row of every table of the review schema as text (bytea decoded)."""
    rows: list[str] = []
    tables = await console.sql(
        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
    )
    for table in (r["tablename"] for r in tables):
        for row in await console.sql(f'SELECT * FROM "{table}"'):
            values = [
                bytes(v).decode("utf-8", "replace") if isinstance(v, (bytes, memoryview)) else v
                for v in row.values()
            ]
            rows.append(f"{table}: {values}")
    return rows


async def everything_in_redis(console: Console) -> list[str]:
    client = redis_client(console.settings)
    found: list[str] = []
    try:
        async for key in client.scan_iter(match=console.settings.cache_prefix + "*"):
            kind = (await client.type(key)).decode()
            value: Any
            if kind == "string":
                value = await client.get(key)
            elif kind == "hash":
                value = await client.hgetall(key)
            elif kind == "zset":
                value = await client.zrange(key, 0, -1)
            else:
                value = kind
            found.append(f"{key!r}: {value!r}")
    finally:
        await client.aclose()
    return found


def everything_on_disk(*roots: Path) -> list[str]:
    return [
        f"{path}: {path.read_bytes().decode('utf-8', 'replace')}"
        for root in roots
        for path in sorted(root.rglob("*"))
        if path.is_file()
    ]


def holding(texts: list[str], needles: set[str]) -> list[str]:
    return [t[:300] for t in texts if any(n in t for n in needles)]


async def test_an_author_is_erased_from_every_store_after_the_whole_loop(
    console: Console, engine: VllmGuardEngine, tmp_path: Path
) -> None:
    settings = console.settings
    registry_dir = tmp_path / "adapters"
    author_posts = [
        new_test_post(text=f"{TEXT} {MARKER}-{i}").model_copy(update={"author_id": "author-x"})
        for i in range(2)
    ]
    other = new_test_post(text=f"another author's words {MARKER}-kept").model_copy(
        update={"author_id": "author-y"}
    )
    async with in_process(settings, engine, "triage", "scorer"):
        await produce(settings, *[(Topic.POSTS, p, p.post_id) for p in [*author_posts, other]])
        decisions = await review_decisions(console, author_posts)
        await console.wait_tasks(2)
        await console.add_reviewer("alice", ("acme",))
        async with console.client("alice") as http:
            for decision in decisions:
                tid = task_id(decision.tenant, decision.post_id, decision.policy)
                for _ in range(100):  # the text arrives on its own topic
                    if (await http.get(f"/api/v1/tasks/{tid}")).json().get("text"):
                        break
                    await asyncio.sleep(0.1)
                decided = await http.post(
                    f"/api/v1/tasks/{tid}/decision",
                    json={
                        "outcome": "correct",
                        "verdict": "unsafe",
                        "reason": REASON,
                        "tags": ["政治隐喻"],
                    },
                )
                assert decided.status_code == 200, decided.text
    archive = Archive(settings.feedback.dir)
    for _ in range(300):
        samples = archive.read()
        if len(samples) == 2:
            break
        await asyncio.sleep(0.1)
    assert {s.post_id for s in samples} == {p.post_id for p in author_posts}
    # An adapter trained after the reviews, serving acme, and its curated set beside the run.
    source = tmp_path / "trained"
    source.mkdir()
    (source / "adapter_config.json").write_text("{}")
    registry = AdapterRegistry(registry_dir)
    card = {"data_window": {"until": utcnow().isoformat()}}
    registry.register("fb-acme", source, card, tenant="acme")
    registry.register("fb-beta", source, card, tenant="beta")
    registry.promote("fb-acme")
    run_dir = settings.feedback.dir / "runs" / "fb-acme"
    run_dir.mkdir(parents=True)
    (run_dir / "model_card.json").write_text(json.dumps(card))
    (run_dir / "held_for_senior.json").write_text(
        json.dumps([{"sample_id": s.sample_id, "post_id": s.post_id} for s in samples])
    )

    post_ids = {p.post_id for p in author_posts}
    content_keys = {d.content_key for d in decisions}
    # The reviewer's reason goes too (reviews, outbox, archive, cache, the audit row's detail).
    needles = {MARKER + "-0", MARKER + "-1", REASON, *post_ids, *content_keys}
    before_pg = holding(await everything_in_postgres(console), needles)
    before_redis = holding(await everything_in_redis(console), needles)
    assert before_pg and before_redis  # the search finds what is there

    # The admin route: only an admin of the tenant; hostile bodies are 4xx; a dry run changes
    # nothing.
    await console.add_reviewer("root", ("acme",), Role.ADMIN)
    await console.add_reviewer("other-root", ("beta",), Role.ADMIN)
    body = {"tenant": "acme", "author_id": "author-x", "dry_run": True}
    async with console.client("alice") as http:
        assert (await http.post("/api/v1/admin/erasures", json=body)).status_code == 403
    async with console.client("other-root") as http:
        assert (await http.post("/api/v1/admin/erasures", json=body)).status_code == 403
    async with console.client("root") as http:
        for hostile in (
            {"tenant": "acme", "author_id": "a\u0000b"},
            {"tenant": "acme", "author_id": "x" * 129},
            {"tenant": "ACME", "author_id": "author-x"},
            {"tenant": "acme"},
            {"tenant": "acme", "author_id": "author-x", "post_ids": ["p"]},
            {"tenant": "acme", "post_ids": [f"p{i}" for i in range(MAX_POSTS + 1)]},
            {"tenant": "acme", "post_ids": ["\ud800"]},
        ):
            # As bytes: JSON escapes (\u0000, \ud800) reach the server as they are.
            refused = await http.post(
                "/api/v1/admin/erasures",
                content=json.dumps(hostile).encode(),
                headers={"content-type": "application/json"},
            )
            assert 400 <= refused.status_code < 500, (hostile, refused.text)
        dry = await http.post("/api/v1/admin/erasures", json=body)
    assert dry.status_code == 200, dry.text
    planned = {s["store"]: s for s in dry.json()["stores"]}
    assert planned["review_db"]["found"] > 0 and planned["feedback_archive"]["found"] == 4
    assert all(s["removed"] == 0 for s in planned.values())
    assert holding(await everything_in_postgres(console), needles) == before_pg
    assert holding(await everything_in_redis(console), needles) == before_redis

    ran = await guardstream(
        settings,
        "erase",
        "--tenant",
        "acme",
        "--author",
        "author-x",
        "--by",
        "dpo-1",
        "--json",
        env={"GUARDSTREAM_ADAPTER_DIR": str(registry_dir)},
    )
    assert ran.code == 0, ran.stderr
    receipt = json.loads(ran.stdout)
    stores = {s["store"]: s for s in receipt["stores"]}
    assert set(stores) == STORES
    assert stores["feedback_archive"]["removed"] == 4  # 2 samples + 2 curated-set entries
    assert stores["verdict_cache"]["removed"] >= 2  # model verdicts and human overrides
    assert stores["adapters"]["ids"] == ["fb-acme"]
    assert set(receipt["posts"]) == {hashed("acme", p) for p in post_ids}

    searched = (
        await everything_in_postgres(console)
        + await everything_in_redis(console)
        + everything_on_disk(settings.feedback.dir, registry_dir)
    )
    assert holding(searched, needles) == []
    assert "author-x" not in ran.stdout and not holding(searched, {"author-x"})
    # Another author's post is still there; every topic is time-retained (no compacted topic
    # holds a latest value to tombstone) and the receipt says how long each keeps a copy.
    [kept] = await console.sql("SELECT text FROM post_texts WHERE post_id = $1", other.post_id)
    assert kept["text"].endswith(MARKER + "-kept")
    assert all(spec.config()["cleanup.policy"] == "delete" for spec in CATALOGUE)
    assert "posts.v1 7 d" in stores["kafka_topics"]["note"]
    marked = AdapterRegistry(registry_dir)
    assert marked.card("fb-acme")["retrain_required"] is True
    assert marked.card("fb-acme")["trained_on_erased_data"] == [receipt["receipt_id"]]
    assert "retrain_required" not in marked.card("fb-beta")
    assert json.loads((run_dir / "model_card.json").read_text())["retrain_required"] is True
    receipt_file = settings.feedback.dir / "erasures" / f"{receipt['receipt_id']}.json"
    assert json.loads(receipt_file.read_text())["tenant"] == "acme"
    [audited] = await console.sql(
        "SELECT actor FROM audit WHERE action = 'erase' AND outcome = 'ok'"
    )
    assert audited["actor"] == "dpo-1"

    async with console.client("root") as http:
        again = await http.post("/api/v1/admin/erasures", json=body)
    assert all(s["found"] == 0 for s in again.json()["stores"]), again.text


async def test_erasure_of_a_post_is_tenant_scoped(console: Console) -> None:
    """The same post id under another tenant is another post: erasing acme's leaves beta's."""
    post = new_test_post(text=f"shared id {MARKER}")
    theirs = post.model_copy(update={"tenant": "beta"})
    await produce(console.settings, (Topic.POSTS, post, post.post_id), (Topic.POSTS, theirs, "x"))
    for _ in range(300):
        rows = await console.sql("SELECT tenant FROM post_texts WHERE post_id = $1", post.post_id)
        if len(rows) == 2:
            break
        await asyncio.sleep(0.1)
    receipt = await erase_on_request(
        console.settings,
        console.review.services.store,
        selector("acme", posts=[post.post_id]),
        dry_run=False,
        requested_by="t",
    )
    assert receipt.store("review_db").removed == 2  # the text and its author index row
    rows = await console.sql("SELECT tenant FROM post_texts WHERE post_id = $1", post.post_id)
    assert [r["tenant"] for r in rows] == ["beta"]


async def test_erase_says_so_when_a_store_is_unreachable(review_settings: Settings) -> None:
    ran = await guardstream(
        review_settings,
        "erase",
        "--tenant",
        "acme",
        "--post",
        "p-1",
        env={"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"},
    )
    assert ran.code == 1 and "erasure incomplete" in ran.stderr
    assert "Traceback" not in ran.stderr
