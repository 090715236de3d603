"""The Qwen2.5-Omni talker in the decode loop (engines/talker_loop.py).

A frame is one code. The prefill is the model's own first forward (it computes the rows' 3D
positions from the thinker's ids and adds the codec pad and bos embeddings to the last two
positions); each later step feeds the drawn code's embedding plus the row's next thinker state,
as `generate` does with `thinker_reply_part`.
"""

from __future__ import annotations

import torch

from omnijobs.engines.talker_loop import TalkerLoop


class Qwen2_5TalkerLoop(TalkerLoop):
    """The running batch of one `Qwen2_5OmniTalkerForConditionalGeneration`."""

    def __init__(self, model, device):
        # The codec's bos and mask ids are never drawn; its end and pad ids both end the speech.
        super().__init__(model, device, [model.codec_bos_token, model.codec_mask_token],
                         [model.codec_eos_token, model.codec_pad_token], model.config, 1, 0)

    def _prefill(self, enc, cache):
        extra = {k: enc[k] for k in ("image_grid_thw", "audio_feature_lengths") if k in enc}
        out = self.m(input_ids=enc["input_ids"], inputs_embeds=enc["inputs_embeds"],
                     attention_mask=enc["attention_mask"], input_text_ids=enc["text_ids"],
                     past_key_values=cache, use_cache=True, **extra)
        return out.logits[:, -1], self._no_state(out.logits.shape[0])

    def _frame(self):
        code = self.code.to(self.device).unsqueeze(1)  # (B, 1)
        return code.cpu(), self.m.get_input_embeddings()(code)

    def _forward(self, inputs, positions):
        out = self.m(inputs_embeds=inputs, attention_mask=self.mask, position_ids=positions,
                     past_key_values=self.cache, use_cache=True)
        return out.logits[:, -1], self._no_state(inputs.shape[0])

    def _no_state(self, rows: int) -> torch.Tensor:
        return torch.zeros((rows, 1, 0), device=self.device)
