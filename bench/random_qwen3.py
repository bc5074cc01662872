"""Random-weight Qwen3 checkpoints of Qwen3Guard-Gen's real sizes, for benchmarks only.

Where the real weights cannot be fetched (no network on the GPU box), throughput can still be
measured at the real shapes: the same layers, widths, heads and vocabulary as
Qwen3Guard-Gen-0.6B / 4B / 8B (their Qwen3 base configs), weights drawn at random. Compute and
memory traffic per token are the real model's; the answers are not. Two changes make its
answers exercise the scorer's real paths: the Safe and Unsafe output rows are set so that after
`Safety:` the model names one of them, about half the sample posts each (`_split_labels`; which
post gets which is as meaningless as the weights), instead of one arbitrary token for every
post, so two-phase scoring makes its second request only for some posts, as on a real feed;
and the scorer bench caps every answer at a real answer's length, since a random model never
stops on its own. The tokenizer and chat template are the tiny test checkpoint's (its ids are
a subset of the vocabulary). Report results as "random weights, <size> shape", never as the
model. Posts can be lengthened to real post lengths (`pad_post`: benign filler before the
post's own text); the label split is then calibrated on posts of that length, since a random
model's hidden state shifts with length and one split would not fit both.

`python bench/random_qwen3.py 0.6B` builds one (cached under the model cache directory) and
prints its path; `bench/scorer.py --model random-0.6B` builds and uses it.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
from pathlib import Path
from typing import Any

from guardstream.model.shapes import COMMON, SHAPES  # the sizes' real shapes

PREFIX = "random-"
# A random model's hidden state after `Safety:` barely depends on the input, so random label
# rows would give every post the same label. The label rows are instead set along the
# direction in which those hidden states vary most across sample posts (their first principal
# component), split at the median: about half the posts read Safe, half Unsafe, for reasons
# no more meaningful than the weights, and ×LABEL_GAIN so a label beats every other token.
LABEL_GAIN = 64.0
CALIBRATION_POSTS = 24
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)


# Benign filler that lengthens a post to a real post's size (`pad_post`).
FILLER = (
    "the weather in the park was pleasant and we walked along the river before lunch while "
    "friends talked about books music recipes travel plans school work the garden a new cafe "
    "near the station photos from the weekend and a film everyone wanted to see again soon"
).split()


def pad_post(tokenizer: Any, text: str, tokens: int, rng: random.Random) -> str:
    """`text` after benign filler: about `tokens` tokens in all (unchanged if it is longer).

    The post's own text comes last, as in a post that hides what matters after padding."""
    need = tokens - len(tokenizer.encode(text, add_special_tokens=False))
    if need <= 0:
        return text
    words: list[str] = []
    ids: list[int] = []
    while len(ids) < need:
        words.extend(rng.choice(FILLER) for _ in range(max(8, need - len(ids))))
        ids = tokenizer.encode(" ".join(words), add_special_tokens=False)
    return f"{tokenizer.decode(ids[:need]).strip()} {text}"


def is_random_model(name: str) -> bool:
    return name.startswith(PREFIX) and name[len(PREFIX) :] in SHAPES


def ensure_random_checkpoint(
    size: str, cache_root: Path, seed: int = 0, post_tokens: int = 0
) -> Path:
    """The checkpoint directory for `size` (built once; bf16 safetensors), its label split
    calibrated on posts of about `post_tokens` tokens (0: the lessons as they are)."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    from guardstream.model.tiny import ensure_tiny_checkpoint

    length = f"-len{post_tokens}" if post_tokens > 0 else ""
    final = Path(cache_root) / f"random-qwen3-{size}-seed{seed}-split{LABEL_GAIN:g}{length}"
    if (final / "config.json").is_file() and any(final.glob("*.safetensors")):
        return final
    tiny = ensure_tiny_checkpoint(Path(cache_root))
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config = Qwen3Config(
        **COMMON,
        **SHAPES[size],
        bos_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="bfloat16",
    )
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # 8B in fp32 would need 32 GB just to build
    # Built (random init) and calibrated on the GPU where there is one: minutes on a CPU.
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        with device:
            model = Qwen3ForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    _split_labels(model, tokenizer, post_tokens)
    model.save_pretrained(tmp)
    for name in TOKENIZER_FILES:
        if (tiny / name).is_file():
            shutil.copy2(tiny / name, tmp / name)
    GenerationConfig(
        bos_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    ).save_pretrained(tmp)
    params = sum(p.numel() for p in model.parameters())
    (tmp / "guardstream-random.json").write_text(
        json.dumps(
            {
                "shape": size,
                "seed": seed,
                "parameters": params,
                "label_gain": LABEL_GAIN,
                "calibration_post_tokens": post_tokens,
            },
            indent=2,
        )
        + "\n"
    )
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def _split_labels(model: Any, tokenizer: Any, post_tokens: int) -> None:
    """Point the Safe / Unsafe output rows so the label depends on the input (module doc)."""
    import torch

    from guardstream.model.guard import ForcedPrefixes
    from guardstream.model.tiny import TEACHING_SET
    from guardstream.scorer.prompt import PromptRenderer

    forced = ForcedPrefixes.of(tokenizer)
    rng = random.Random(post_tokens)
    states = []
    with torch.inference_mode():
        for number in range(CALIBRATION_POSTS):
            chat = TEACHING_SET[number % len(TEACHING_SET)].chat()
            text = f"{chat[-1]['content']} #{number:05d}"
            chat[-1] = {**chat[-1], "content": pad_post(tokenizer, text, post_tokens, rng)}
            ids = PromptRenderer(tokenizer, 1 << 20).encode(chat) + forced.safety
            hidden = model.model(torch.tensor([ids], device=model.device)).last_hidden_state[0, -1]
            states.append(hidden.float())
    h = torch.stack(states).cpu()
    mean = h.mean(0)
    direction = torch.linalg.svd(h - mean, full_matrices=False).Vh[0]
    # A row u with h . u = 1 on every sample (least squares, minimum norm) stands in for the
    # bias a language-model head lacks: logit(Safe) - logit(Unsafe) = 2 * gain * (h . direction
    # - median) on the samples, and close to it on posts like them.
    projection = h @ direction
    ones = torch.linalg.lstsq(h, torch.ones(len(h), 1)).solution[:, 0]
    row = direction - projection.median() * ones
    row = row / (h @ row).abs().median()  # the median sample sits one unit from the boundary
    out = model.get_output_embeddings().weight
    with torch.no_grad():
        out[forced.label_token["Safe"]] = (LABEL_GAIN * row).to(out.device, out.dtype)
        out[forced.label_token["Unsafe"]] = (-LABEL_GAIN * row).to(out.device, out.dtype)


def main() -> None:
    from guardstream.runtime.settings import Settings

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("size", choices=sorted(SHAPES))
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--post-tokens", type=int, default=0, help="calibration post length")
    args = parser.parse_args()
    cache = args.cache_dir or Settings().model.cache_dir
    print(ensure_random_checkpoint(args.size, cache, post_tokens=args.post_tokens))


if __name__ == "__main__":
    main()
