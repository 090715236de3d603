"""Image/audio + text → text on transformers: one left-padded `generate` for the whole batch.

Family engines (Qwen2.5-Omni and Qwen3-Omni thinkers, Qwen2.5-VL) subclass it with their model
class, special-token names and audio-length rule. Omni thinkers also return, per row, the hidden
states the talker stage needs (`hidden`, a tensor bundle), unless the job asked for no audio.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import torch
from transformers import (
    GenerationConfig,
    LogitsProcessorList,
    StoppingCriteriaList,
    WhisperFeatureExtractor,
)

from omnijobs.engines.base import Engine, Media, RowResult, StageRequest
from omnijobs.engines.deltas import step_deltas
from omnijobs.engines.hidden_stream import PORT, HiddenStream
from omnijobs.engines.loading import check_complete
from omnijobs.engines.media_features import decode_image, decode_wav
from omnijobs.engines.sampling import (
    RowSampler,
    RowStop,
    cut_at_stop,
    sampling_row,
    stop_token_ids,
)
from omnijobs.engines.torch_runtime import torch_device
from omnijobs.errors import EngineDead, FatalStageError

AUDIO_RATE = 16000


class MultimodalLMEngine(Engine):
    model_class: Any = None
    # Special-token names as in the family's released tokenizer.
    tokens: ClassVar[dict[str, str]] = {}
    system_prompt = "You are a helpful assistant."
    # Whether rows get a `hidden` bundle for a talker stage (stage option `handoff` overrides).
    handoff = False

    def load(self) -> None:
        from transformers import AutoTokenizer, Qwen2VLImageProcessorPil

        path = self.ctx.model_path
        if not (path / "config.json").is_file():
            raise EngineDead(f"model folder not found: {path} (build tiny models with `omnijobs models build-tiny`)")
        self.device = torch_device(self.ctx.device)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        # Tiny builds keep each processor in its own subfolder; released checkpoints share one
        # preprocessor_config.json at the top, which both classes read their own keys from.
        self.image_processor = Qwen2VLImageProcessorPil.from_pretrained(_part(path, "image_processor"))
        self.feature_extractor = (
            WhisperFeatureExtractor.from_pretrained(_part(path, "feature_extractor"))
            if "audio" in self.tokens else None
        )
        model, info = self.model_class.from_pretrained(path, output_loading_info=True)
        check_complete(path, info)
        self.model = model.to(self.device).eval()
        self.ids = {name: self._token_id(token) for name, token in self.tokens.items()}
        self.im_start, self.im_end = self._token_id("<|im_start|>"), self._token_id("<|im_end|>")
        self.stop_ids = sorted(stop_token_ids(self.tokenizer, model) | {self.im_end})
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.im_end
        handoff_file = path / "handoff.json"
        self.handoff_tokens = json.loads(handoff_file.read_text())["embed_tokens"] if handoff_file.exists() else {}
        self.handoff = bool(self.ctx.stage.options.get("handoff", self.handoff))
        if self.handoff and not self.handoff_tokens:
            raise EngineDead(f"{path} has no handoff.json: the next stage needs the thinker's special embeddings")

    def _token_id(self, token: str) -> int:
        tid = self.tokenizer.convert_tokens_to_ids(token)
        if tid is None or tid == self.tokenizer.unk_token_id:
            raise EngineDead(f"tokenizer of {self.ctx.model_path} lacks the special token {token}")
        return tid

    # ------------------------------------------------------------------ prompt

    def audio_tokens(self, frames: int) -> int:
        raise NotImplementedError

    def _encode(self, text: str, user: bool = False) -> list[int]:
        # User text never turns into control tokens, whatever it contains.
        return self.tokenizer(text, add_special_tokens=False, split_special_tokens=user)["input_ids"]

    def _row(self, req: StageRequest) -> dict[str, Any]:
        """Token ids, masks and media features of one request."""
        images = [decode_image(v, port) for port, v in sorted(req.inputs.items())
                  if port.startswith("image") and v is not None]
        audio = req.inputs.get("audio")
        for port, value in req.inputs.items():
            if (port.startswith("image") or port == "audio") and value is not None and not isinstance(value, Media):
                raise FatalStageError(f"input '{port}' must be media, got {type(value).__name__}")
        system = req.inputs.get("system") or self.system_prompt
        ids = [self.im_start, *self._encode(f"system\n{system}"), self.im_end, *self._encode("\n")]
        user_start = len(ids)
        ids += [self.im_start, *self._encode("user\n")]
        row: dict[str, Any] = {"image_grid_thw": None, "pixel_values": None, "features": None}
        if images:
            pix = self.image_processor(images=images, return_tensors="pt")
            row["pixel_values"], row["image_grid_thw"] = pix["pixel_values"], pix["image_grid_thw"]
            merge = self.image_processor.merge_size ** 2
            for thw in pix["image_grid_thw"]:
                ids += [self.ids["vision_start"], *[self.ids["image"]] * int(thw.prod() // merge),
                        self.ids["vision_end"]]
        if audio is not None:
            if self.feature_extractor is None:
                raise FatalStageError("this model takes no audio input")
            samples = decode_wav(audio, AUDIO_RATE)
            feats = self.feature_extractor(samples, sampling_rate=AUDIO_RATE, return_attention_mask=True,
                                           padding="longest", return_tensors="pt")
            frames = int(feats["attention_mask"].sum())
            row["features"] = feats["input_features"][0, :, :frames]
            ids += [self.ids["audio_start"], *[self.ids["audio"]] * self.audio_tokens(frames), self.ids["audio_end"]]
        ids += [*self._encode(req.inputs.get("prompt") or "", user=True), self.im_end, *self._encode("\n")]
        user_end = len(ids)
        ids += [self.im_start, *self._encode("assistant\n")]
        row["ids"] = ids
        row["user_mask"] = [user_start <= i < user_end for i in range(len(ids))]
        return row

    # ------------------------------------------------------------------ batch

    def run(self, batch: list[StageRequest]) -> list[RowResult]:
        results: list[RowResult | None] = [None] * len(batch)
        rows, sampling, live = [], [], []
        max_pos = getattr(self._text_config(), "max_position_embeddings", None)
        for i, req in enumerate(batch):
            try:
                row = self._row(req)
                samp = sampling_row(req)
                if max_pos and len(row["ids"]) + samp["max_tokens"] > max_pos:
                    raise FatalStageError(f"prompt of {len(row['ids'])} tokens + max_tokens {samp['max_tokens']} "
                                          f"exceeds the model's {max_pos} positions")
            except FatalStageError as exc:
                results[i] = exc
                continue
            rows.append(row)
            sampling.append(samp)
            live.append(i)
        if not live:
            return results
        handoff = self.handoff and any(_wants_audio(batch[i]) for i in live)
        deltas = step_deltas(self.ctx, [batch[i] for i in live], [s["max_tokens"] for s in sampling], self.stop_ids,
                             self._decode)
        with torch.no_grad():
            enc = self._collate(rows)
            prompt_len = enc["input_ids"].shape[1]
            stream = self._hidden_stream([batch[i] for i in live], rows, sampling, prompt_len) if handoff else None
            try:
                out = self.model.generate(
                    **enc,
                    generation_config=GenerationConfig(
                        max_new_tokens=max(s["max_tokens"] for s in sampling), do_sample=False,
                        pad_token_id=self.pad_id, eos_token_id=self.stop_ids,
                        output_hidden_states=handoff, return_dict_in_generate=True,
                    ),
                    logits_processor=LogitsProcessorList([RowSampler(sampling, self.stop_ids)]),
                    stopping_criteria=StoppingCriteriaList([RowStop(
                        prompt_len, [s["max_tokens"] for s in sampling], [batch[i].run_id for i in live],
                        self.ctx.should_stop), *([deltas] if deltas else []), *([stream] if stream else [])]),
                )
            finally:
                if stream is not None:
                    stream.close()
        finished = []
        for j, i in enumerate(live):
            drawn = out.sequences[j, prompt_len:].tolist()[: sampling[j]["max_tokens"]]
            tokens = cut_at_stop(drawn, sampling[j]["max_tokens"], set(self.stop_ids))
            finished.append((j, tokens, self._decode(tokens)))
            result = {
                "text": finished[-1][2],
                "token_ids": tokens,
                "usage": {"prompt_tokens": len(rows[j]["ids"]), "completion_tokens": len(tokens)},
            }
            if handoff and _wants_audio(batch[i]):
                # A reply token has states once the model consumed it: every token before a stop token,
                # but never the last one of a row cut at max_tokens (whatever its neighbours did).
                n_reply = len(tokens) if any(t in self.stop_ids for t in drawn) else max(0, len(tokens) - 1)
                result["hidden"] = self._handoff(out.hidden_states, j, rows[j], tokens[:n_reply], prompt_len)
            results[i] = result
        if deltas:
            deltas.finish(finished)
        return results

    def _hidden_stream(self, requests: list[StageRequest], rows: list[dict[str, Any]], sampling: list[dict],
                       prompt_len: int) -> HiddenStream | None:
        """The writer of the rows' `hidden` streams, where the talker reads them as one."""
        chunks = self.ctx.chunks
        if chunks is None or PORT not in chunks.outgoing:
            return None
        return HiddenStream(self, chunks, requests, rows, [s["max_tokens"] for s in sampling],
                            [_wants_audio(r) for r in requests], prompt_len, self.stop_ids, self.ctx.should_stop)

    def _decode(self, tokens) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def _text_config(self):
        config = self.model.config
        return getattr(config, "text_config", None) or config.get_text_config()

    def _collate(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(r["ids"]) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for j, r in enumerate(rows):
            input_ids[j, width - len(r["ids"]):] = torch.tensor(r["ids"])
            attention[j, width - len(r["ids"]):] = 1
        enc = {"input_ids": input_ids, "attention_mask": attention}
        with_images = [r for r in rows if r["pixel_values"] is not None]
        if with_images:
            enc["pixel_values"] = torch.cat([r["pixel_values"] for r in with_images]).to(self.model.dtype)
            enc["image_grid_thw"] = torch.cat([r["image_grid_thw"] for r in with_images])
        with_audio = [r["features"] for r in rows if r["features"] is not None]
        if with_audio:
            frames = max(f.shape[1] for f in with_audio)
            feats = torch.zeros((len(with_audio), with_audio[0].shape[0], frames))
            mask = torch.zeros((len(with_audio), frames), dtype=torch.long)
            for k, f in enumerate(with_audio):
                feats[k, :, : f.shape[1]] = f
                mask[k, : f.shape[1]] = 1
            enc["input_features"], enc["feature_attention_mask"] = feats.to(self.model.dtype), mask
        return {k: v.to(self.device) for k, v in enc.items()}

    def _handoff(self, hidden_states, j: int, row: dict[str, Any], tokens: list[int],
                 prompt_len: int) -> dict[str, torch.Tensor]:
        """One row's thinker states for the talker: prompt and reply, unpadded.

        `hidden_states[k]` (k >= 1) is the forward pass that consumed reply token k-1.
        """
        layer = self.hidden_layer()
        first = hidden_states[0]
        n_reply = min(len(tokens), len(hidden_states) - 1)
        steps = hidden_states[1: n_reply + 1]
        return {
            **self.prompt_part(first, j, row, prompt_len),
            "reply_ids": torch.tensor(tokens[:n_reply], dtype=torch.long),
            "reply_embeds": _stack([s[0][j, -1] for s in steps], first[0].shape[-1]),
            "reply_hidden": _stack([s[layer][j, -1] for s in steps], first[0].shape[-1]),
        }

    def hidden_layer(self) -> int:
        return int(self.ctx.stage.options.get("hidden_layer", -1))

    def prompt_part(self, first, j: int, row: dict[str, Any], prompt_len: int) -> dict[str, torch.Tensor]:
        """The hand-off's prompt states (from the prefill's hidden states `first`), masks, media
        extras and special embeddings: all of it but the reply."""
        layer = self.hidden_layer()
        n_prompt = len(row["ids"])
        ids = torch.tensor(row["ids"], dtype=torch.long)
        mm = torch.zeros(n_prompt, dtype=torch.bool)
        for name in ("image", "audio", "video"):
            if name in self.ids:
                mm |= ids == self.ids[name]
        embed = self.model.get_input_embeddings()
        part = {
            "prompt_ids": ids,
            "prompt_embeds": first[0][j, prompt_len - n_prompt:].float().cpu().contiguous(),
            "prompt_hidden": first[layer][j, prompt_len - n_prompt:].float().cpu().contiguous(),
            "prompt_mm_mask": mm,
            "prompt_user_mask": torch.tensor(row["user_mask"], dtype=torch.bool),
        }
        if row["image_grid_thw"] is not None:
            part["image_grid_thw"] = row["image_grid_thw"].long().cpu()
        if row["features"] is not None:
            part["audio_feature_lengths"] = torch.tensor([row["features"].shape[1]], dtype=torch.long)
        with torch.no_grad():
            for name, tid in self.handoff_tokens.items():
                part[f"embed.{name}"] = embed(torch.tensor([tid], device=self.device))[0].float().cpu()
        return part


def _part(path, name: str):
    return path / name if (path / name).is_dir() else path


def _wants_audio(req: StageRequest) -> bool:
    modalities = req.inputs.get("modalities")
    return not isinstance(modalities, list) or "audio" in modalities


def _stack(vectors: list[torch.Tensor], dim: int) -> torch.Tensor:
    if not vectors:
        return torch.zeros((0, dim))
    return torch.stack(vectors).float().cpu().contiguous()
