"""Qwen2.5-Omni token2wav for a whole batch: one DiT flow-matching solve for every row, then BigVGAN.

`Qwen2_5OmniToken2WavModel.forward` renders one row: noise from the global generator, no padding
mask, and the speaker encoder rerun on the same reference mel at every ODE evaluation. Here the
same sub-modules run the same maths for rows of different lengths at once:
- each row's initial noise comes from its own generator, so a row's audio depends on its own
  codes, speaker and seed only, alone or in a batch;
- rows are right-padded and padded positions are masked out of every real position's attention
  (the DiT's only cross-position operation), so padding cannot leak into a row;
- everything that does not change between ODE evaluations (speaker encoder, code embeddings, the
  conditioning part of the input projection, positions, the attention mask) is computed once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import RungeKutta4ODESolver

# Rows per BigVGAN call: more made each row slower on CPU (its activations leave the cache).
VOCODER_ROWS = 4
# A block distance no layer's look-ahead or look-back reaches: marks a masked (query, key) pair.
_FAR = 1 << 30


@dataclass
class SpeakerCondition:
    """A speaker's conditioning, encoded once: the speaker encoder's output for its reference mel
    and for the unconditional (all-zero) mel of classifier-free guidance, plus its `cond` vector."""

    encoded: torch.Tensor  # (enc_dim,)
    encoded_null: torch.Tensor  # (enc_dim,)
    cond: torch.Tensor  # (enc_emb_dim,)


@dataclass
class MelRow:
    codes: torch.Tensor  # (T,) codec ids
    speaker: SpeakerCondition
    generator: torch.Generator | None
    # Frames of the whole sequence before `codes` (a window of it): the DiT's attention blocks are
    # counted from the sequence's start, so a window sees the blocks the whole render does.
    offset: int = 0
    # The initial value of the solve, (T·repeats, mel_dim); None: drawn from `generator`.
    noise: torch.Tensor | None = None


@torch.no_grad()
def encode_speaker(dit, cond: torch.Tensor, ref_mel: torch.Tensor) -> SpeakerCondition:
    ref_mel = ref_mel.float().reshape(1, -1, dit.mel_dim)
    encoded = dit.input_embed.spk_encoder(torch.cat([ref_mel, torch.zeros_like(ref_mel)]))
    return SpeakerCondition(encoded[0], encoded[1], cond.float().reshape(-1))


class _Velocity:
    """The guided DiT velocity field for a padded batch; `__call__(t, x)` is one ODE evaluation."""

    def __init__(self, dit, rows: list[MelRow], lengths: list[int], guidance_scale: float, on_eval=None):
        self.dit, self.scale, self.on_eval = dit, guidance_scale, on_eval
        b, width = len(rows), max(lengths)
        device = dit.proj_out.weight.device
        codes = torch.zeros((b, width // dit.repeats), dtype=torch.long, device=device)
        for j, row in enumerate(rows):
            codes[j, : row.codes.shape[0]] = row.codes
        text = dit.text_embed(codes)  # (B, W, emb_dim), each code repeated `repeats` times
        text_null = dit.text_embed(codes, drop_code=True)
        encoded = torch.stack([r.speaker.encoded for r in rows]).to(device)
        encoded_null = torch.stack([r.speaker.encoded_null for r in rows]).to(device)
        cond = torch.stack([r.speaker.cond for r in rows]).to(device)
        # The conditional half of the batch, then the unconditional one (no speaker, no reference
        # mel, codes dropped), in the order of the model's own input embedding.
        conditioning = torch.cat([
            torch.cat([_along(encoded, width), text, _along(cond, width)], dim=-1),
            torch.cat([_along(encoded_null, width), text_null, torch.zeros((b, width, cond.shape[1]), device=device)],
                      dim=-1),
        ])
        proj = dit.input_embed.proj
        mel_dim = dit.mel_dim
        self.x_weight = proj.weight[:, :mel_dim]
        self.conditioned = F.linear(conditioning, proj.weight[:, mel_dim:], proj.bias)  # (2B, W, hidden)
        hidden = self.conditioned
        positions = torch.arange(width, device=device).unsqueeze(0).expand(2 * b, -1)
        self.position_embeddings = dit.rotary_embed(hidden, positions)
        # One additive mask per distinct (look-back, look-ahead) of the layers, built once: the
        # layers' own forward rebuilds a boolean mask from block distances at every evaluation,
        # which cost more than the rest of the DiT at these sizes.
        diff = _block_diff(dit, lengths, [r.offset * dit.repeats for r in rows], width, device)
        masks: dict[tuple[int, int], torch.Tensor] = {}
        self.masks = []
        for block in dit.transformer_blocks:
            band = (block.look_backward_block, block.look_ahead_block)
            if band not in masks:
                allowed = (diff >= -band[0]) & (diff <= band[1])
                masks[band] = torch.zeros(allowed.shape, device=device).masked_fill(~allowed, float("-inf"))
            self.masks.append(masks[band])

    def __call__(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        dit = self.dit
        if self.on_eval:
            self.on_eval()
        time = dit.time_embed(t.reshape(1)).expand(self.conditioned.shape[0], -1)
        hidden = F.linear(torch.cat([x, x]), self.x_weight) + self.conditioned
        for block, mask in zip(dit.transformer_blocks, self.masks):
            hidden = _layer(block, hidden, time, self.position_embeddings, mask)
        out = dit.proj_out(dit.norm_out(hidden, time))
        guided, null = out.chunk(2)
        return guided + (guided - null) * self.scale


def _layer(block, hidden: torch.Tensor, time: torch.Tensor, positions, mask: torch.Tensor) -> torch.Tensor:
    """`DiTDecoderLayer.forward` with a ready attention mask (the same operations otherwise)."""
    norm, gate_msa, shift_mlp, scale_mlp, gate_mlp = block.attn_norm(hidden, emb=time)
    hidden = hidden + gate_msa.unsqueeze(1) * block.attn(hidden_states=norm, position_embeddings=positions,
                                                         attention_mask=mask)
    norm = block.ff_norm(hidden) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
    return hidden + gate_mlp.unsqueeze(1) * block.ff(norm)


def _along(v: torch.Tensor, width: int) -> torch.Tensor:
    return v.unsqueeze(1).expand(-1, width, -1)


def _block_diff(dit, lengths: list[int], offsets: list[int], width: int, device) -> torch.Tensor:
    """The DiT's block distances (blocks counted from each row's mel offset), with real queries
    kept off padded keys. A padded query may still attend within its band (so no softmax row is
    empty); nothing reads what it computes."""
    blocks = (torch.arange(width, device=device).unsqueeze(0)
              + torch.tensor(offsets, device=device).unsqueeze(1)) // dit.block_size  # (B, W)
    diff = blocks.unsqueeze(1) - blocks.unsqueeze(2)  # (B, query, key): key block - query block
    real = torch.arange(width, device=device).unsqueeze(0) < torch.tensor(lengths, device=device).unsqueeze(1)
    hidden_key = real.unsqueeze(2) & ~real.unsqueeze(1)  # (B, query, key)
    diff = diff.masked_fill(hidden_key, _FAR)
    return diff.repeat(2, 1, 1).unsqueeze(1)  # (2B, 1, W, W): the same for every head


@torch.no_grad()
def sample_mels(dit, rows: list[MelRow], num_steps: int, guidance_scale: float = 0.5, sway_coefficient: float = -1.0,
                on_eval=None) -> list[torch.Tensor]:
    """Each row's mel spectrogram (mel_dim, T·repeats), solved together; the steps and their sway
    follow `Qwen2_5OmniToken2WavDiTModel.sample`."""
    lengths = [int(r.codes.shape[0]) * dit.repeats for r in rows]
    width = max(lengths)
    if width > dit.config.max_position_embeddings:
        raise ValueError(f"mel length {width} exceeds the DiT's max_position_embeddings "
                         f"({dit.config.max_position_embeddings}); send fewer codes")
    device = dit.proj_out.weight.device
    noise = torch.zeros((len(rows), width, dit.mel_dim), device=device)
    for j, (row, n) in enumerate(zip(rows, lengths)):
        start = row.noise if row.noise is not None else torch.randn((n, dit.mel_dim), generator=row.generator)
        noise[j, :n] = start.to(device)
    velocity = _Velocity(dit, rows, lengths, guidance_scale, on_eval)
    times = torch.linspace(0, 1, num_steps, device=device)
    if sway_coefficient is not None:
        times += sway_coefficient * (torch.cos(torch.pi / 2 * times) - 1 + times)
    final = RungeKutta4ODESolver(function=velocity, initial_value=noise).integrate(times)[-1]
    return [final[j, :n].T for j, n in enumerate(lengths)]


@torch.no_grad()
def vocode(bigvgan, mels: list[torch.Tensor]) -> list[torch.Tensor]:
    """Waveforms, one BigVGAN call per distinct mel length (and per VOCODER_ROWS rows).

    NOTE: rows of different lengths are not padded together: BigVGAN is non-causal and its
    anti-aliasing filters replicate the edge sample, so padding would change the end of every
    shorter row. It is compute-bound on CPU (measured: no gain from larger calls), so the calls
    per length cost nothing that one padded call would save.
    """
    out: list[torch.Tensor | None] = [None] * len(mels)
    by_length: dict[int, list[int]] = {}
    for j, mel in enumerate(mels):
        by_length.setdefault(mel.shape[-1], []).append(j)
    for same in by_length.values():
        for start in range(0, len(same), VOCODER_ROWS):
            indices = same[start : start + VOCODER_ROWS]
            wavs = bigvgan(torch.stack([mels[j] for j in indices])).reshape(len(indices), -1)
            for k, j in enumerate(indices):
                out[j] = wavs[k]
    return out
