"""The project's tiny Qwen3Guard-format checkpoint: built from scratch, it must answer every lesson
exactly as Qwen3Guard-Gen would, through the standard transformers loading path, and be built
once per cache however many processes ask for it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from guardstream.model import tiny
from guardstream.model.tiny import (
    LABEL_WORDS,
    MANIFEST_NAME,
    TEACHING_SET,
    TINY_BUILDER_VERSION,
    Lesson,
    ensure_tiny_checkpoint,
    load_chat_template,
    render_chat,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny-cache")


@pytest.fixture(scope="module")
def checkpoint(cache_root: Path) -> Path:
    return ensure_tiny_checkpoint(cache_root)


@pytest.fixture(scope="module")
def loaded(checkpoint: Path) -> Iterator[tuple[Any, Any]]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    yield tokenizer, model


def test_checkpoint_layout(checkpoint: Path) -> None:
    assert checkpoint.name == f"tiny-{TINY_BUILDER_VERSION}"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        assert (checkpoint / name).is_file(), name
    manifest = json.loads((checkpoint / MANIFEST_NAME).read_text())
    assert manifest["builder_version"] == TINY_BUILDER_VERSION
    assert manifest["lessons"] == len(TEACHING_SET)
    assert manifest["train_seconds"] > 0
    assert manifest["final_loss"] < 0.1
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForCausalLM"]
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (2, 1)
    assert config["head_dim"] == 64


def test_tokenizer_is_qwen_shaped(loaded: tuple[Any, Any]) -> None:
    tokenizer, model = loaded
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.chat_template == load_chat_template()
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    # The scorer reads the verdict from one token after "Safety:": each word is its own token.
    first_tokens = set()
    for word in LABEL_WORDS:
        ids = tokenizer.encode(word, add_special_tokens=False)
        assert len(ids) == 1, (word, tokenizer.convert_ids_to_tokens(ids))
        first_tokens.add(ids[0])
    assert len(first_tokens) == len(LABEL_WORDS)


@pytest.mark.parametrize("lesson", TEACHING_SET, ids=lambda lesson: lesson.messages[-1][1][:40])
def test_greedy_generate_reproduces_every_lesson(loaded: tuple[Any, Any], lesson: Lesson) -> None:
    import torch

    tokenizer, model = loaded
    prompt = tokenizer.apply_chat_template(
        lesson.chat(), add_generation_prompt=True, tokenize=False
    )
    assert prompt == render_chat(lesson.chat(), add_generation_prompt=True)
    inputs = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=32)
    new_tokens = out[0, inputs["input_ids"].shape[1] :]
    assert int(new_tokens[-1]) == tokenizer.eos_token_id
    assert tokenizer.decode(new_tokens, skip_special_tokens=True) == lesson.target


def test_second_call_reuses_the_cache(
    cache_root: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = checkpoint / MANIFEST_NAME
    before = manifest.stat().st_mtime_ns

    def must_not_build(out_dir: Path, *, seed: int = 0) -> Path:
        raise AssertionError("rebuilt a cached checkpoint")

    monkeypatch.setattr(tiny, "build_tiny_checkpoint", must_not_build)
    assert ensure_tiny_checkpoint(cache_root) == checkpoint
    assert manifest.stat().st_mtime_ns == before


def _fake_builder(calls: list[Path], gate: threading.Event | None = None) -> Any:
    def build(out_dir: Path, *, seed: int = 0) -> Path:
        calls.append(out_dir)
        if gate is not None:
            gate.wait(timeout=10)
        (out_dir / "config.json").write_text("{}")
        (out_dir / MANIFEST_NAME).write_text("{}")
        return out_dir

    return build


def test_concurrent_callers_build_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    gate = threading.Event()
    monkeypatch.setattr(tiny, "build_tiny_checkpoint", _fake_builder(calls, gate))
    results: list[Path] = []

    def worker() -> None:
        results.append(ensure_tiny_checkpoint(tmp_path))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    gate.set()
    for thread in threads:
        thread.join(timeout=30)
    assert len(calls) == 1
    assert results == [tmp_path / f"tiny-{TINY_BUILDER_VERSION}"] * 4
    # Only the finished checkpoint and the lock file remain: no temp dirs left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"tiny-{TINY_BUILDER_VERSION}", f".tiny-{TINY_BUILDER_VERSION}.lock"]
    )


def test_failed_or_partial_builds_are_never_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    final = tmp_path / f"tiny-{TINY_BUILDER_VERSION}"

    def broken(out_dir: Path, *, seed: int = 0) -> Path:
        (out_dir / "config.json").write_text("{}")
        raise RuntimeError("build failed half way")

    monkeypatch.setattr(tiny, "build_tiny_checkpoint", broken)
    with pytest.raises(RuntimeError, match="half way"):
        ensure_tiny_checkpoint(tmp_path)
    assert not final.exists()
    assert [p.name for p in tmp_path.iterdir()] == [f".tiny-{TINY_BUILDER_VERSION}.lock"]

    # A directory without the manifest (e.g. copied by hand) is replaced, not trusted.
    final.mkdir()
    (final / "config.json").write_text("{}")
    calls: list[Path] = []
    monkeypatch.setattr(tiny, "build_tiny_checkpoint", _fake_builder(calls))
    assert ensure_tiny_checkpoint(tmp_path) == final
    assert len(calls) == 1
    assert (final / MANIFEST_NAME).is_file()
