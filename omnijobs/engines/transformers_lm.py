"""Autoregressive LM engine on transformers: one left-padded `generate` per batch.

Each row keeps its own sampling params: sampling happens in a logits processor with a random
generator per row, so a row's tokens depend on its own seed and not on its batch neighbours.
"""

from __future__ import annotations

from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LogitsProcessorList,
    StoppingCriteriaList,
)

from omnijobs.engines.base import Engine, RowResult, StageRequest
from omnijobs.engines.deltas import step_deltas
from omnijobs.engines.loading import check_complete
from omnijobs.engines.sampling import (
    RowSampler,
    RowStop,
    cut_at_stop,
    sampling_row,
    stop_token_ids,
)
from omnijobs.engines.torch_runtime import torch_device
from omnijobs.errors import EngineDead, FatalStageError


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
        self.stop_ids = sorted(stop_token_ids(self.tokenizer, model))
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
            rows.append(sampling_row(req))
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
        deltas = step_deltas(self.ctx, [batch[i] for i in live], [r["max_tokens"] for r in rows], self.stop_ids,
                             self._decode)
        out = self.model.generate(
            **enc,
            generation_config=GenerationConfig(
                max_new_tokens=max(r["max_tokens"] for r in rows),
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.stop_ids or None,
            ),
            logits_processor=LogitsProcessorList([RowSampler(rows, self.stop_ids)]),
            stopping_criteria=StoppingCriteriaList(
                [RowStop(prompt_len, [r["max_tokens"] for r in rows], [batch[i].run_id for i in live],
                          self.ctx.should_stop), *([deltas] if deltas else [])]
            ),
        )
        finished = []
        for j, i in enumerate(live):
            tokens = cut_at_stop(out[j, prompt_len:].tolist(), rows[j]["max_tokens"], set(self.stop_ids))
            text = self._decode(tokens)
            finished.append((j, tokens, text))
            results[i] = {
                "text": text,
                "token_ids": tokens,
                "usage": {"prompt_tokens": int(enc["attention_mask"][j].sum()), "completion_tokens": len(tokens)},
            }
        if deltas:
            deltas.finish(finished)
        return results

    def _decode(self, tokens) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def _prompt(self, req: StageRequest) -> str:
        template = self.ctx.stage.options.get("prompt_template")
        user = template.format(**{k: v or "" for k, v in req.inputs.items()}) if template else req.inputs["prompt"]
        system = req.inputs.get("system")
        history = _history(req.inputs.get("history"))
        if self.tokenizer.chat_template and self.ctx.stage.options.get("chat", True):
            messages = ([{"role": "system", "content": system}] if system else []) + history + [
                {"role": "user", "content": user}
            ]
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if history:
            raise ValueError("earlier turns need a model with a chat template")
        return f"{system}\n\n{user}" if system else user


def _history(value) -> list[dict[str, str]]:
    """Earlier turns of a conversation (user/assistant messages before the prompt), for the chat template."""
    if not value:
        return []
    if not isinstance(value, list) or not all(
        isinstance(m, dict) and m.get("role") in ("user", "assistant") and isinstance(m.get("content"), str)
        for m in value
    ):
        raise ValueError("history must be a list of {role: user|assistant, content: text}")
    return [{"role": m["role"], "content": m["content"]} for m in value]
