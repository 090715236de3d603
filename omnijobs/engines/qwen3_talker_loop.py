"""The Qwen3-Omni talker in the decode loop (engines/talker_loop.py).

A frame is G codes: the talker draws the first group, and its code predictor the G-1 residual
codes greedily after it (as the engine runs `generate`), reading the talker's last state. The
talker's steps take 3D positions and `generation_step=0`, as inside `generate`.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from omnijobs.engines.talker_loop import TalkerLoop


class Qwen3TalkerLoop(TalkerLoop):
    """The running batch of one `Qwen3OmniMoeTalkerForConditionalGeneration`."""

    def __init__(self, model, device, suppress: list[int], eos_id: int):
        cfg = model.config
        super().__init__(model, device, suppress, [eos_id], cfg.text_config, cfg.num_code_groups,
                         cfg.text_config.hidden_size)

    def _prefill(self, enc, cache):
        extra = {k: enc[k] for k in ("image_grid_thw", "audio_feature_lengths") if k in enc}
        out = self.m(inputs_embeds=enc["inputs_embeds"], attention_mask=enc["attention_mask"],
                     talker_input_ids=enc["input_ids"], past_key_values=cache, use_cache=True,
                     output_hidden_states=True, **extra)
        return out.logits[:, -1], out.hidden_states[0][-1][:, -1:]

    def _frame(self):
        m, cp = self.m, self.m.code_predictor
        first = self.code.to(self.device).unsqueeze(1)  # (B, 1)
        first_embed = m.get_input_embeddings()(first)
        residual, embeds = [first], [first_embed]
        cp_cache = DynamicCache(config=cp.config)
        out = cp(inputs_embeds=torch.cat((self.hidden, first_embed), dim=1), past_key_values=cp_cache, use_cache=True)
        for k in range(1, self.groups):
            code = out.logits[:, -1].argmax(dim=-1, keepdim=True)
            residual.append(code)
            embeds.append(cp.get_input_embeddings()[k - 1](code))
            if k < self.groups - 1:
                out = cp(input_ids=code, generation_steps=k, past_key_values=cp_cache, use_cache=True)
        # The frame's summed code embeddings, in the order `generate` sums them.
        return torch.cat(residual, dim=1).cpu(), torch.cat(embeds, dim=1).sum(1, keepdim=True)

    def _forward(self, inputs, positions):
        out = self.m(inputs_embeds=inputs, attention_mask=self.mask, position_ids=positions,
                     past_key_values=self.cache, use_cache=True, output_hidden_states=True, generation_step=0)
        return out.logits[:, -1], out.hidden_states[0][-1][:, -1:]
