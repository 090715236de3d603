"""The folder vLLM loads for an omni thinker stage.

vLLM serves the thinker of a whole released checkpoint (config with `thinker_config`, weights
under `thinker.`, tokenizer naming its media tokens), and such a folder is loaded as it is. A
thinker saved on its own, as the tiny builds are, lacks all three; for those a view is written
once: the config wrapped as the released one, the weights copied under `thinker.` (the size of
the thinker's weights, on the first start only), the tokenizer config with the media token names,
and links to everything else.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from omnijobs.engines.vllm.omni_prompts import FAMILIES, MODEL_TYPES
from omnijobs.engines.vllm.runtime import vllm_model_folder
from omnijobs.errors import EngineDead

# The processor's names for the family's media tokens (tokenizer attributes in released checkpoints).
PROCESSOR_TOKENS = {"image_token": "image", "audio_token": "audio", "video_token": "video",
                    "vision_bos_token": "vision_start", "vision_eos_token": "vision_end",
                    "audio_bos_token": "audio_start", "audio_eos_token": "audio_end"}
REWRITTEN = ("config.json", "tokenizer_config.json", "model.safetensors.index.json")
# Part of a view's name: a view written by an older rule is written again.
VIEW_VERSION = 2


def family_of(model_path: Path) -> str:
    """The omni family of a checkpoint folder (config.json's model_type), or EngineDead."""
    model_type = json.loads((model_path / "config.json").read_text()).get("model_type", "")
    if model_type not in MODEL_TYPES:
        raise EngineDead(f"{model_path} is not an omni thinker (model_type {model_type!r}; "
                         f"known: {', '.join(sorted(MODEL_TYPES))})")
    return MODEL_TYPES[model_type]


def thinker_folder(model_path: Path) -> Path:
    folder = vllm_model_folder(model_path)
    config = json.loads((folder / "config.json").read_text())
    if "thinker_config" in config:
        return folder
    family = FAMILIES[family_of(folder)]
    weights = sorted(folder.glob("*.safetensors"))
    digest = hashlib.sha256(f"{VIEW_VERSION}:{folder.resolve()}".encode())
    for part in [folder / "config.json", *weights]:
        stat = part.stat()
        digest.update(f"{part.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    view = Path(os.environ["VLLM_CACHE_ROOT"]) / "thinker-views" / digest.hexdigest()[:16]
    if (view / "config.json").is_file():
        return view
    # Built aside and renamed into place: two workers starting together never see half a view.
    staging = view.with_name(f"{view.name}.{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for entry in folder.iterdir():
        if entry.name not in REWRITTEN and entry.suffix != ".safetensors":
            (staging / entry.name).symlink_to(entry.resolve())
    _write_json(staging / "config.json", {"architectures": [family.architecture], "model_type": family.model_type,
                                          "thinker_config": _released_keys(config), "enable_audio_output": False})
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    named = dict(tokenizer_config.get("model_specific_special_tokens") or {})
    for attr, name in PROCESSOR_TOKENS.items():
        named.setdefault(attr, family.tokens[name])
    tokenizer_config["model_specific_special_tokens"] = named
    _write_json(staging / "tokenizer_config.json", tokenizer_config)
    _prefixed_weights(folder, staging, weights)
    try:
        staging.rename(view)
    except OSError:  # another worker's view won the race; both are the same
        shutil.rmtree(staging, ignore_errors=True)
    return view


def _released_keys(config: dict) -> dict:
    """The thinker config with keys released configs carry and vLLM reads, where transformers'
    configs lack them: Qwen3-Omni's vision `image_size` (vLLM sizes the position grid by it,
    transformers by `num_position_embeddings`), its text config's `tie_word_embeddings`, and
    `mrope_interleaved` beside the rope's `interleaved` (without it vLLM rotates media positions
    by contiguous sections, and every state after an image drifts from transformers')."""
    config = dict(config)
    vision = dict(config.get("vision_config") or {})
    if "num_position_embeddings" in vision and "image_size" not in vision:
        vision["image_size"] = round(vision["num_position_embeddings"] ** 0.5) * vision["patch_size"]
        vision.setdefault("apply_vit_abs_pos_embed", True)
        config["vision_config"] = vision
    text = dict(config.get("text_config") or {})
    if text and "tie_word_embeddings" not in text:
        text["tie_word_embeddings"] = bool(config.get("tie_word_embeddings", False))
    for key in ("rope_parameters", "rope_scaling"):
        rope = text.get(key)
        if isinstance(rope, dict) and "interleaved" in rope and "mrope_interleaved" not in rope:
            text[key] = {**rope, "mrope_interleaved": rope["interleaved"]}
    if text:
        config["text_config"] = text
    return config


def _prefixed_weights(folder: Path, staging: Path, weights: list[Path]) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    for part in weights:
        with safe_open(part, "pt") as f:
            save_file({f"thinker.{k}": f.get_tensor(k) for k in f.keys()}, staging / part.name,
                      metadata={"format": "pt"})
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        data = json.loads(index.read_text())
        data["weight_map"] = {f"thinker.{k}": v for k, v in data["weight_map"].items()}
        _write_json(staging / index.name, data)


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=1))
