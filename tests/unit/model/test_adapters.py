"""The adapter registry: registration copies files in, promotion and rollback are per tenant,
and readers see a change without restarting."""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guardstream.model.adapters import AdapterError, AdapterRegistry

pytestmark = pytest.mark.unit


def peft_dir(tmp_path: Path, name: str) -> Path:
    source = tmp_path / "src" / name
    source.mkdir(parents=True)
    (source / "adapter_config.json").write_text(json.dumps({"r": 8}))
    (source / "adapter_model.safetensors").write_bytes(b"weights")
    return source


def test_an_adapter_trained_with_reasons_says_so_from_its_card(tmp_path: Path) -> None:
    registry = AdapterRegistry(tmp_path / "reg")
    taught = registry.register("fb-r", peft_dir(tmp_path, "r"), {"trained_with_reasons": True})
    plain = registry.register("fb-p", peft_dir(tmp_path, "p"), {"trained_with_reasons": "yes"})
    assert taught.trained_with_reasons and not plain.trained_with_reasons
    reader = AdapterRegistry(tmp_path / "reg").snapshot(fresh=True)
    assert reader.adapters["fb-r"].trained_with_reasons
    assert not reader.adapters["fb-p"].trained_with_reasons  # only a real true counts


def test_register_promote_and_roll_back_per_tenant(tmp_path: Path) -> None:
    writer = AdapterRegistry(tmp_path / "reg")
    reader = AdapterRegistry(tmp_path / "reg", poll_s=3600)  # another process
    assert reader.serving_for("acme") is None

    global_one = writer.register("fb-1", peft_dir(tmp_path, "a"), {"metrics": {}})
    assert (global_one.path / "adapter_model.safetensors").read_bytes() == b"weights"
    assert writer.serving_for("acme") is None  # registered is not serving
    writer.promote("fb-1")
    writer.register("acme-1", peft_dir(tmp_path, "b"), tenant="acme")
    writer.promote("acme-1")

    fresh = reader.snapshot(fresh=True)
    acme = fresh.serving_for("acme")
    other = fresh.serving_for("beta")
    assert acme is not None
    assert other is not None
    assert (acme.adapter_id, other.adapter_id) == ("acme-1", "fb-1")

    writer.retire("acme")  # rollback: acme falls back to the global adapter
    after = reader.snapshot(fresh=True).serving_for("acme")
    assert after is not None
    assert after.adapter_id == "fb-1"
    writer.retire()
    assert reader.snapshot(fresh=True).serving_for("beta") is None


def test_readers_poll_at_most_once_per_interval(tmp_path: Path) -> None:
    writer = AdapterRegistry(tmp_path)
    reader = AdapterRegistry(tmp_path, poll_s=3600)
    assert reader.serving_for("x") is None  # read once (no file yet)
    writer.register("fb-1", peft_dir(tmp_path, "a"))
    writer.promote("fb-1")
    assert reader.serving_for("x") is None  # not re-checked within the interval
    assert reader.get("fb-1") is not None  # an unknown id forces a fresh read


def test_every_write_is_a_new_generation_and_a_reader_serves_the_one_it_read(
    tmp_path: Path,
) -> None:
    writer = AdapterRegistry(tmp_path)
    reader = AdapterRegistry(tmp_path, poll_s=3600)
    assert (writer.generation, reader.snapshot().generation) == (0, 0)  # no file yet
    writer.register("fb-1", peft_dir(tmp_path, "a"))
    assert reader.snapshot(fresh=True).generation == reader.generation == 1
    writer.promote("fb-1")
    writer.start_shadow("fb-1", tenant="beta")
    writer.update_card("fb-1", {"note": "x"})
    writer.end_shadow("fb-1", "retired", "test")
    writer.retire()
    assert reader.generation == 1  # not re-read within its interval: still serves 1
    assert reader.snapshot(fresh=True).generation == reader.generation == 6
    with pytest.raises(AdapterError):
        writer.promote("fb-2")  # refused: nothing written, no new generation
    assert reader.snapshot(fresh=True).generation == 6


def test_a_replaced_file_with_the_same_modification_time_is_read_again(tmp_path: Path) -> None:
    """Two writes within one tick of the file system's clock: the second is still seen."""
    writer = AdapterRegistry(tmp_path)
    reader = AdapterRegistry(tmp_path, poll_s=3600)
    writer.register("fb-1", peft_dir(tmp_path, "a"))
    first = (tmp_path / "registry.json").stat()
    assert reader.snapshot(fresh=True).serving_for("t") is None
    writer.promote("fb-1")
    os.utime(tmp_path / "registry.json", ns=(first.st_atime_ns, first.st_mtime_ns))
    fresh = reader.snapshot(fresh=True)
    assert fresh.generation == 2
    assert fresh.serving_for("t") is not None


@pytest.mark.parametrize("generation", [-3, "7", 2.5, None, True])
def test_a_nonsense_generation_reads_as_zero_and_the_next_write_is_one(
    tmp_path: Path, generation: object
) -> None:
    registry = AdapterRegistry(tmp_path)
    registry.register("fb-1", peft_dir(tmp_path, "a"))
    data = json.loads((tmp_path / "registry.json").read_text())
    (tmp_path / "registry.json").write_text(json.dumps({**data, "generation": generation}))
    assert registry.snapshot(fresh=True).generation == 0
    registry.promote("fb-1")
    assert registry.snapshot(fresh=True).generation == 1


async def test_a_watching_reader_takes_a_change_without_being_asked(tmp_path: Path) -> None:
    writer = AdapterRegistry(tmp_path)
    reader = AdapterRegistry(tmp_path, poll_s=0.05)  # a process with no traffic
    stop = asyncio.Event()
    watching = asyncio.create_task(reader.watch(stop))
    try:
        writer.register("fb-1", peft_dir(tmp_path, "a"))
        writer.promote("fb-1")
        whole = (tmp_path / "registry.json").read_text()
        (tmp_path / "registry.json").write_text("{not json")  # a hand edit half done
        await asyncio.sleep(0.2)  # a few polls meet the broken file: it keeps going
        assert not watching.done()
        (tmp_path / "registry.json").write_text(whole)  # the edit undone
        writer.retire()
        wanted = writer.snapshot(fresh=True).generation
        for _ in range(3000):  # 30 s at most
            if reader.generation == wanted:
                break
            await asyncio.sleep(0.01)
        assert reader.generation == wanted, "the watcher never took the new generation"
        assert reader.snapshot().serving_for("t") is None
    finally:
        stop.set()
        await asyncio.wait_for(watching, 5)  # stops at once when told


def test_mistakes_are_refused_with_a_reason(tmp_path: Path) -> None:
    registry = AdapterRegistry(tmp_path / "reg")
    with pytest.raises(AdapterError, match="not a peft adapter"):
        registry.register("fb-1", tmp_path)
    with pytest.raises(AdapterError, match="adapter id"):
        registry.register("../escape", peft_dir(tmp_path, "a"))
    registry.register("fb-1", peft_dir(tmp_path, "b"))
    with pytest.raises(AdapterError, match="already registered"):
        registry.register("fb-1", peft_dir(tmp_path, "c"))
    with pytest.raises(AdapterError, match="no adapter"):
        registry.promote("fb-2")


def test_a_shadow_candidate_shadows_the_traffic_it_would_serve(tmp_path: Path) -> None:
    writer = AdapterRegistry(tmp_path / "reg")
    reader = AdapterRegistry(tmp_path / "reg", poll_s=3600)  # a scorer
    writer.register("acme-1", peft_dir(tmp_path, "a"), tenant="acme")
    writer.promote("acme-1")
    writer.register("all-2", peft_dir(tmp_path, "b"))
    assert writer.start_shadow("all-2") is None

    snapshot = reader.snapshot(fresh=True)
    beta = snapshot.shadow_for("beta")
    assert beta is not None
    assert beta.adapter_id == "all-2"
    # acme is served by its own adapter: an every-tenant candidate would not replace it.
    assert snapshot.shadow_for("acme") is None
    assert snapshot.serving_for("beta") is None  # shadowing is not serving

    writer.register("acme-2", peft_dir(tmp_path, "c"), tenant="acme")
    writer.register("acme-3", peft_dir(tmp_path, "d"), tenant="acme")
    writer.start_shadow("acme-2")
    assert writer.start_shadow("acme-3") == "acme-2"  # one candidate per tenant
    assert writer.card("acme-2")["shadow_outcome"]["outcome"] == "superseded"
    assert "shadow_since" in writer.card("acme-3")
    acme = reader.snapshot(fresh=True).shadow_for("acme")
    assert acme is not None
    assert acme.adapter_id == "acme-3"

    writer.promote("acme-3")  # promotion ends its shadow
    after = reader.snapshot(fresh=True)
    assert after.shadow_for("acme") is None
    assert after.shadow == {"*": "all-2"}

    writer.end_shadow("all-2", "retired", "lost on live traffic")
    assert reader.snapshot(fresh=True).shadow_for("beta") is None
    assert writer.card("all-2")["shadow_outcome"]["why"] == "lost on live traffic"
    history = json.loads((tmp_path / "reg" / "registry.json").read_text())["history"]
    assert [h.get("shadow", "-") for h in history] == ["-", "all-2", "acme-2", "acme-3", "-", None]


def write_entry(registry: AdapterRegistry, adapter_id: str, path: str) -> None:
    """Edit registry.json by hand, as anyone with write access to the volume could."""
    data = json.loads((registry.root / "registry.json").read_text())
    data["adapters"][adapter_id] = {"path": path, "tenant": "*", "registered_at": "2026-01-01"}
    data["serving"]["*"] = adapter_id
    (registry.root / "registry.json").write_text(json.dumps(data))


@pytest.mark.parametrize(
    "path",
    ["../../outside", "/etc", "adapters/../../outside", "adapters", ".", "adapters/link-out"],
)
def test_entries_pointing_outside_the_registry_are_never_served(tmp_path: Path, path: str) -> None:
    registry = AdapterRegistry(tmp_path / "reg")
    registry.register("fb-1", peft_dir(tmp_path, "a"))
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "adapter_config.json").write_text("{}")
    (registry.root / "adapters" / "link-out").symlink_to(tmp_path / "outside")
    write_entry(registry, "evil", path)
    snapshot = registry.snapshot(fresh=True)
    assert "evil" not in snapshot.adapters and registry.serving_for("t") is None
    assert registry.get("evil") is None
    assert snapshot.adapters["fb-1"].path == (registry.root / "adapters" / "fb-1").resolve()


def test_a_link_inside_an_adapter_directory_leading_out_drops_it(tmp_path: Path) -> None:
    registry = AdapterRegistry(tmp_path / "reg")
    adapter = registry.register("fb-1", peft_dir(tmp_path, "a"))
    registry.promote("fb-1")
    (adapter.path / "adapter_model.safetensors").unlink()
    (adapter.path / "adapter_model.safetensors").symlink_to("/etc/passwd")
    assert registry.snapshot(fresh=True).adapters == {}
    assert registry.serving_for("t") is None


@settings(max_examples=200, deadline=None)
@given(
    adapter_id=st.text(max_size=70),
    path=st.one_of(
        st.text(max_size=40),
        st.lists(st.sampled_from(["..", ".", "adapters", "fb-1", "/", "etc", "x"]), max_size=6).map(
            "/".join
        ),
    ),
)
def test_whatever_an_entry_says_a_served_path_is_inside_the_registry(
    tmp_path_factory: pytest.TempPathFactory, adapter_id: str, path: str
) -> None:
    root = tmp_path_factory.mktemp("reg")
    registry = AdapterRegistry(root / "reg")
    registry.register("fb-1", peft_dir(root, "a"))
    write_entry(registry, adapter_id, path)
    home = (registry.root / "adapters").resolve()
    for found in registry.snapshot(fresh=True).adapters.values():
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", found.adapter_id)
        assert found.path.is_relative_to(home) and found.path != home
        assert found.path == found.path.resolve()
