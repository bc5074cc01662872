"""Erasure on the files the feedback loop keeps: an archive part is rewritten without the
erased samples (a writer waiting on the part's lock appends to the new file, never to the one
renamed away), a dry run changes no byte, and a serving adapter trained on erased data makes
the next cycle retrain without waiting for new samples."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from guardstream.contracts.events import utcnow
from guardstream.feedback.job import FeedbackConfig, run_cycle
from guardstream.model.adapters import AdapterRegistry
from guardstream.verdict.archive import Archive, locked_part
from guardstream.verdict.erasers import AdapterEraser, ArchiveEraser
from guardstream.verdict.erasure import Erasure, selector
from tests.support.feedback import taught_samples

pytestmark = pytest.mark.unit


def contents(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


async def test_an_archive_part_is_rewritten_without_the_erased_samples(tmp_path: Path) -> None:
    archive = Archive(tmp_path, "w")
    samples = taught_samples()[:4]
    archive.append(samples)
    gone = samples[1]
    run = Erasure([ArchiveEraser(archive)])
    sel = selector("acme", posts=[gone.post_id])
    before = contents(tmp_path)
    dry = await run.run(sel, dry_run=True, requested_by="t")
    assert dry.stores[0].found == 1 and contents(tmp_path) == before
    other_tenant = await run.run(
        selector("beta", posts=[gone.post_id]), dry_run=False, requested_by="t"
    )
    assert other_tenant.stores[0].found == 0
    done = await run.run(sel, dry_run=False, requested_by="t")
    assert done.stores[0].removed == 1
    assert [s.sample_id for s in archive.read()] == [s.sample_id for s in samples if s is not gone]
    assert not any(gone.text.encode() in raw for raw in contents(tmp_path).values())


def test_a_writer_waiting_on_the_lock_appends_to_the_rewritten_part(tmp_path: Path) -> None:
    archive = Archive(tmp_path, "w")
    first, second = taught_samples()[:2]
    archive.append([first])
    (part,) = tmp_path.rglob("part-*.jsonl")
    with locked_part(part):
        writer = threading.Thread(target=archive.append, args=([second],))
        writer.start()
        time.sleep(0.2)  # the writer now waits for the lock
        assert writer.is_alive()
        replacement = part.with_name(".new")
        replacement.write_bytes(b"")
        replacement.replace(part)  # what erasure does: a new file under the old name
    writer.join(10)
    assert [s.sample_id for s in archive.read()] == [second.sample_id]


async def test_an_adapter_trained_on_erased_data_is_retrained_by_the_next_cycle(
    tmp_path: Path,
) -> None:
    archive = Archive(tmp_path / "feedback", "w")
    registry = AdapterRegistry(tmp_path / "adapters")
    source = tmp_path / "src"
    source.mkdir()
    (source / "adapter_config.json").write_text("{}")
    registry.register("fb-1", source, {"data_window": {"until": utcnow().isoformat()}}, "acme")
    registry.promote("fb-1")
    config = FeedbackConfig(min_samples=500)
    waits = run_cycle(archive, "base", registry, utcnow(), config, tenant="acme")
    assert waits.status == "skipped" and "training needs 500" in waits.detail

    sample = taught_samples()[0].model_copy(update={"reviewed_at": utcnow() - timedelta(days=1)})
    archive.append([sample])
    run = Erasure([ArchiveEraser(archive), AdapterEraser(registry, None, "er-1")])
    receipt = await run.run(
        selector("acme", posts=[sample.post_id]), dry_run=False, requested_by="t"
    )
    assert receipt.store("adapters").ids == ("fb-1",)
    assert registry.card("fb-1")["retrain_required"] is True
    # Forced: the archive is empty now, so there is nothing to train on - but it tried.
    retrains = run_cycle(archive, "base", registry, utcnow(), config, tenant="acme")
    assert (retrains.status, retrains.detail) == ("skipped", "nothing trainable")
