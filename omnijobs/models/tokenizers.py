"""Tokenizers trained locally (no hub): byte-level BPE with Qwen2's pre-tokenizer regex."""

from __future__ import annotations

from pathlib import Path

QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "OmniJobs runs any-to-any models as durable jobs split into stages.",
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs!",
    "A job flows from the API to Postgres, then to Redis queues, then to GPU workers.",
    "Write a short poem about the sea. Rewrite the following draft to be clearer.",
    "Numbers 0123456789 and punctuation: , . ; : ? ! ' \" ( ) [ ] { } - _ / \\ @ # $ % ^ & * + = < > | ~ `",
    "system user assistant hello world image audio video text speech picture sound",
]


def train_qwen2_tokenizer(out: Path, vocab_size: int = 512, extra_special: list[str] | None = None):
    """Train a byte-level BPE and save it as a Qwen2Tokenizer that AutoTokenizer reloads."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    special = QWEN_SPECIAL + list(extra_special or [])
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(CORPUS * 4, trainer=trainer)
    state = bpe.model.__getstate__()
    import json

    model_state = json.loads(state)
    vocab = model_state["vocab"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model_state["merges"]]
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=special[1:],
    )
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out)
    return tokenizer
