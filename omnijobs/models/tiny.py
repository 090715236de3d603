"""`omnijobs models build-tiny`: tiny random-weight models of the real classes, saved per stage.

Outputs are noise, but loading and running them takes the same `from_pretrained` path as a real
checkpoint does.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

# folder under the models dir -> builder. Later model families register theirs here.
BUILDERS: dict[str, Callable[[Path], None]] = {}
# folder -> builder version: a folder built by an older version is rebuilt.
VERSIONS: dict[str, int] = {}


def builder(folder: str, version: int = 1):
    def register(fn: Callable[[Path], None]) -> Callable[[Path], None]:
        BUILDERS[folder] = fn
        VERSIONS[folder] = version
        return fn

    return register


def _current(marker: Path, folder: str) -> bool:
    try:
        built = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return built.get("version", 1) == VERSIONS[folder]


@builder("tiny/qwen2")
def build_qwen2_lm(out: Path) -> None:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from omnijobs.models.tokenizers import train_qwen2_tokenizer

    tokenizer = train_qwen2_tokenizer(out)
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,  # head_dim 32: the smallest the CPU attention of vLLM accepts
        num_key_value_heads=1,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    Qwen2ForCausalLM(config).save_pretrained(out)


def set_output_level(layer, probe, target_std: float = 0.05) -> None:
    """Scale a speech decoder's last (linear, bias-free) layer so `probe()` outputs noise of
    `target_std` (peaks near 0.3).

    Random weights leave the tiny decoders' output near 1e-7, below one 16-bit step: their WAVs
    would be silent, which looks like a bug to anyone listening.
    """
    import torch

    with torch.no_grad():
        if getattr(layer, "bias", None) is not None:
            layer.bias.zero_()
        std = float(probe().float().std())
        layer.weight.mul_(target_std / std)


def build_tiny(models_dir: Path, only: list[str] | None = None, force: bool = False) -> list[Path]:
    """Build every registered tiny model that is missing (or all with force). Returns the folders built."""
    built = []
    for folder, build in BUILDERS.items():
        if only and folder not in only:
            continue
        out = Path(models_dir) / folder
        marker = out / ".omnijobs-tiny.json"
        if _current(marker, folder) and not force:
            continue
        out.mkdir(parents=True, exist_ok=True)
        build(out)
        marker.write_text(json.dumps({"builder": folder, "version": VERSIONS[folder]}))
        built.append(out)
    return built


# Model families with their own module register their builders when imported.
from omnijobs.models import diffusion_image, diffusion_media  # noqa: F401
from omnijobs.models import qwen2_5_vl, qwen3_omni, qwen_omni  # noqa: E402,F401
