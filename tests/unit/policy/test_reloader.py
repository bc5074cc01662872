"""Reloading packs while a process runs: a valid change is taken whole, anything else refused
with the old set kept (policy/reloader.py)."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from guardstream.policy import PackReloader, PolicyRegistry, ReloadOutcome, load_watched
from guardstream.policy.reloader import pack_digest

pytestmark = pytest.mark.unit

DEFAULT = 'id: default\nversion: "{v}"\ntenants: ["*"]\ncontroversial: {mode}\n'
FORUM = 'id: forum\nversion: "1"\ntenants: [forum]\n'


def write(path: Path, text: str) -> None:
    """As `guardstream policy apply` and a ConfigMap do: the file is swapped in whole."""
    spare = path.with_name(f".{path.name}.tmp")
    spare.write_text(text, encoding="utf-8")
    os.replace(spare, path)


def reloader_for(directory: Path) -> tuple[PolicyRegistry, PackReloader]:
    registry, reloader = load_watched(directory, process="test", poll_s=0.01)
    assert reloader is not None
    return registry, reloader


@pytest.fixture
def packs(tmp_path: Path) -> Path:
    write(tmp_path / "default.yaml", DEFAULT.format(v=1, mode="review"))
    write(tmp_path / "forum.yaml", FORUM)
    return tmp_path


def test_a_valid_change_is_put_in_force_in_the_registry_every_holder_has(packs: Path) -> None:
    registry, reloader = reloader_for(packs)
    assert reloader.check().outcome is ReloadOutcome.UNCHANGED
    write(packs / "default.yaml", DEFAULT.format(v=2, mode="strict"))
    found = reloader.check()
    assert found.outcome is ReloadOutcome.APPLIED
    assert registry.for_post("acme", None).ref == "default@2"
    assert registry.for_post("forum", None).ref == "forum@1"
    assert reloader.status() == {"policy_reloads": 1}
    assert reloader.check().outcome is ReloadOutcome.UNCHANGED


def test_a_bad_file_is_refused_once_with_its_reason_and_the_old_packs_stay(
    packs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry, reloader = reloader_for(packs)
    write(packs / "default.yaml", DEFAULT.format(v=2, mode="review") + "always_blok: [Violent]\n")
    with caplog.at_level(logging.ERROR, logger="guardstream.policy.reloader"):
        found = reloader.check()
        again = reloader.check()
    assert found.outcome is ReloadOutcome.REFUSED
    assert found.reason is not None
    assert "default.yaml" in found.reason
    assert "always_blok" in found.reason
    assert again.outcome is ReloadOutcome.REFUSED
    assert [r.getMessage() for r in caplog.records] == [
        "policy packs refused; the packs in force stay"
    ]
    assert registry.for_post("acme", None).ref == "default@1"
    assert registry.for_post("acme", None).controversial == "review"

    # Fixed: taken at the next poll.
    write(packs / "default.yaml", DEFAULT.format(v=2, mode="strict"))
    assert reloader.check().outcome is ReloadOutcome.APPLIED
    assert registry.for_post("acme", None).ref == "default@2"


def test_a_set_that_cannot_form_a_registry_is_refused_as_a_whole(packs: Path) -> None:
    registry, reloader = reloader_for(packs)
    # A valid new forum version beside a second pack claiming the same tenant: nothing moves,
    # not even the forum pack that is fine on its own.
    write(packs / "forum.yaml", FORUM.replace('"1"', '"2"'))
    write(packs / "forum-again.yaml", FORUM.replace("id: forum", "id: forum-2"))
    found = reloader.check()
    assert found.outcome is ReloadOutcome.REFUSED
    assert "claimed twice" in (found.reason or "")
    assert registry.versions() == {"default": "1", "forum": "1"}


def test_a_changed_pack_that_kept_its_version_is_refused(packs: Path) -> None:
    registry, reloader = reloader_for(packs)
    write(packs / "default.yaml", DEFAULT.format(v=1, mode="loose"))
    found = reloader.check()
    assert found.outcome is ReloadOutcome.REFUSED
    assert "changed but kept version '1'" in (found.reason or "")
    assert registry.for_post("acme", None).controversial == "review"
    # A comment or a reordering that leaves the pack equal is not a change of rules.
    write(packs / "default.yaml", "# reviewed\n" + DEFAULT.format(v=1, mode="review"))
    assert reloader.check().outcome is ReloadOutcome.APPLIED
    assert registry.for_post("acme", None).ref == "default@1"


def test_a_configmap_swap_of_its_data_link_is_seen(tmp_path: Path) -> None:
    """Kubernetes mounts a ConfigMap as `key -> ..data/key` and `..data -> ..<timestamp>`,
    and updates it by pointing `..data` at a new timestamped folder in one rename."""
    first = tmp_path / "..2026_12_07_01"
    first.mkdir()
    (first / "default.yaml").write_text(DEFAULT.format(v=1, mode="review"))
    (tmp_path / "..data").symlink_to(first.name)
    (tmp_path / "default.yaml").symlink_to("..data/default.yaml")
    registry, reloader = reloader_for(tmp_path)
    assert registry.default.ref == "default@1"

    second = tmp_path / "..2026_12_07_02"
    second.mkdir()
    (second / "default.yaml").write_text(DEFAULT.format(v=2, mode="review"))
    (tmp_path / "..data_tmp").symlink_to(second.name)
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    assert reloader.check().outcome is ReloadOutcome.APPLIED
    assert registry.default.ref == "default@2"


def test_the_digest_ignores_what_the_loader_ignores(packs: Path) -> None:
    before = pack_digest(packs)
    (packs / ".history").mkdir()
    (packs / ".history" / "default@0.yaml").write_text("junk: [")
    (packs / "notes.txt").write_text("not a pack")
    (packs / ".default.yaml.tmp").write_text("half written")
    assert pack_digest(packs) == before
    (packs / "extra.yml").write_text(FORUM)
    assert pack_digest(packs) != before


def test_shipped_packs_and_poll_zero_have_no_reloader(packs: Path) -> None:
    assert load_watched(None, process="test", poll_s=1.0)[1] is None
    assert load_watched(packs, process="test", poll_s=0)[1] is None


async def test_watch_takes_a_change_in_the_background_and_stops(packs: Path) -> None:
    registry, reloader = reloader_for(packs)
    stop = asyncio.Event()
    watching = asyncio.create_task(reloader.watch(stop))
    write(packs / "default.yaml", DEFAULT.format(v=2, mode="review"))
    for _ in range(500):
        if registry.default.ref == "default@2":
            break
        await asyncio.sleep(0.01)
    assert registry.default.ref == "default@2"
    stop.set()
    await asyncio.wait_for(watching, 5)


BODIES = st.binary(max_size=400) | st.text(max_size=400).map(
    lambda t: t.encode("utf-8", "surrogatepass")
)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=BODIES)
@example(body=b"\x00\xff\xfe")
@example(body="id: default\nversion: \"\ud800\"\ntenants: ['*']\n".encode("utf-8", "surrogatepass"))
@example(body=b'id: default\nversion: "9"\ntenants: ["*"]\n')
@example(body=b'id: default\nversion: "9"\ntenants: ["*", "acme"]\n' + b"x" * 100_000)
def test_any_file_content_is_applied_whole_or_refused_never_half(
    tmp_path_factory: pytest.TempPathFactory, body: bytes
) -> None:
    directory = tmp_path_factory.mktemp("packs")
    write(directory / "default.yaml", DEFAULT.format(v=1, mode="review"))
    write(directory / "forum.yaml", FORUM)
    registry, reloader = reloader_for(directory)
    spare = directory / ".tmp"
    spare.write_bytes(body)
    os.replace(spare, directory / "default.yaml")
    found = reloader.check()
    assert found.outcome in {ReloadOutcome.APPLIED, ReloadOutcome.REFUSED}
    refs = {p.ref for p in registry.packs}
    if found.outcome is ReloadOutcome.REFUSED:
        assert refs == {"default@1", "forum@1"}
        assert found.reason
    else:
        assert refs == {"default@9", "forum@1"}
    registry.for_post("forum", "CN")  # always answers: a default pack is always in force
