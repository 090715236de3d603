"""Autoregressive LM engine on transformers: one left-padded `generate` per batch.

Each row keeps its own sampling params: sampling happens in a logits processor with a random
generator per row, so a row's tokens depend on its own seed and not on its batch neighbours.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

from omnijobs.engines.base import Engine, RowResult, StageRequest
from omnijobs.engines.loading import check_complete
from omnijobs.engines.torch_runtime import torch_device
from omnijobs.errors import EngineDead, FatalStageError


class _RowSampler(LogitsProcessor):
    """Picks each row's next token with that row's temperature, top-p and generator.

    Returns logits that are -inf everywhere but the chosen token, so greedy decoding takes it.
    """

    def __init__(self, rows: list[dict[str, Any]], stop_ids: list[int]):
        self.rows = rows
        self.stop_ids = stop_ids

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.float()
        chosen = torch.empty(scores.shape[0], dtype=torch.long)
        for i, row in enumerate(self.rows):
            logits = scores[i]
            if row["ignore_eos"] and self.stop_ids:
                logits = logits.clone()
                logits[self.stop_ids] = float("-inf")
            chosen[i] = _pick(logits, row["temperature"], row["top_p"], row["generator"])
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(scores.shape[0]), chosen.to(scores.device)] = 0.0
        return out


def _pick(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / temperature, dim=-1).cpu()
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < top_p
        keep[0] = True
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


class _RowStop(StoppingCriteria):
    """Ends each row at its own max_tokens, or at once if its job was canceled."""

    def __init__(self, prompt_len: int, max_tokens: list[int], run_ids: list[str], should_stop):
        self.prompt_len = prompt_len
        self.max_tokens = torch.tensor(max_tokens)
        self.run_ids = run_ids
        self.should_stop = should_stop

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        generated = input_ids.shape[1] - self.prompt_len
        done = (generated >= self.max_tokens).to(input_ids.device)
        canceled = torch.tensor([bool(self.should_stop(r)) for r in self.run_ids], device=input_ids.device)
        return done | canceled


class TransformersLMEngine(Engine):
    def load(self) -> None:
        path = self.ctx.model_path
        if not path.is_dir():
            raise EngineDead(f"model folder not found: {path} (build tiny models with `omnijobs models build-tiny`)")
        self.device = torch_device(self.ctx.device)
        self.tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
        model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
        check_complete(path, info)
        self.model = model.to(self.device).eval()
        self.stop_ids = sorted(_stop_ids(self.tokenizer, model))
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.max_positions = getattr(model.config, "max_position_embeddings", None)

    def run(self, batch: list[StageRequest]) -> list[RowResult]:
        results: list[RowResult | None] = [None] * len(batch)
        rows, prompts, live = [], [], []
        for i, req in enumerate(batch):
            try:
                prompts.append(self._prompt(req))
            except (KeyError, ValueError) as exc:
                results[i] = FatalStageError(f"cannot build the prompt: {exc}")
                continue
            rows.append(_sampling_row(req))
            live.append(i)
        if not live:
            return results
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True).to(self.device)
        prompt_len = enc["input_ids"].shape[1]
        for j, i in enumerate(list(live)):
            n_prompt = int(enc["attention_mask"][j].sum())
            if self.max_positions and n_prompt + rows[j]["max_tokens"] > self.max_positions:
                results[i] = FatalStageError(
                    f"prompt of {n_prompt} tokens + max_tokens {rows[j]['max_tokens']} exceeds the model's "
                    f"{self.max_positions} positions"
                )
        keep = [j for j, i in enumerate(live) if results[i] is None]
        if not keep:
            return results
        if len(keep) < len(live):
            enc = {k: v[keep] for k, v in enc.items()}
            rows = [rows[j] for j in keep]
            live = [live[j] for j in keep]
        out = self.model.generate(
            **enc,
            generation_config=GenerationConfig(
                max_new_tokens=max(r["max_tokens"] for r in rows),
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.stop_ids or None,
            ),
            logits_processor=LogitsProcessorList([_RowSampler(rows, self.stop_ids)]),
            stopping_criteria=StoppingCriteriaList(
                [_RowStop(prompt_len, [r["max_tokens"] for r in rows], [batch[i].run_id for i in live],
                          self.ctx.should_stop)]
            ),
        )
        for j, i in enumerate(live):
            tokens = _cut(out[j, prompt_len:].tolist(), rows[j]["max_tokens"], set(self.stop_ids))
            results[i] = {
                "text": self.tokenizer.decode(tokens, skip_special_tokens=True),
                "token_ids": tokens,
                "usage": {"prompt_tokens": int(enc["attention_mask"][j].sum()), "completion_tokens": len(tokens)},
            }
        return results

    def _prompt(self, req: StageRequest) -> str:
        template = self.ctx.stage.options.get("prompt_template")
        user = template.format(**{k: v or "" for k, v in req.inputs.items()}) if template else req.inputs["prompt"]
        system = req.inputs.get("system")
        if self.tokenizer.chat_template and self.ctx.stage.options.get("chat", True):
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": user}
            ]
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return f"{system}\n\n{user}" if system else user


def _sampling_row(req: StageRequest) -> dict[str, Any]:
    p = req.params
    generator = torch.Generator()
    seed = p.get("seed")
    generator.manual_seed(int(seed) if seed is not None else torch.seed())
    return {
        "max_tokens": int(p.get("max_tokens", 16)),
        "temperature": float(p.get("temperature", 1.0)),
        "top_p": float(p.get("top_p", 1.0)),
        "ignore_eos": bool(p.get("ignore_eos", False)),
        "generator": generator,
    }


def _stop_ids(tokenizer, model) -> set[int]:
    ids: set[int] = set()
    for source in (model.generation_config.eos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(source)
    return ids


def _cut(tokens: list[int], max_tokens: int, stop_ids: set[int]) -> list[int]:
    tokens = tokens[:max_tokens]
    for k, t in enumerate(tokens):
        if t in stop_ids:
            return tokens[:k]
    return tokens
