"""How close Qwen2.5-Omni's streamed token2wav (tiles with context) is to the whole render, and what it costs.

For the same codes, speaker and seed, the whole render (one DiT solve over the row, then BigVGAN)
is compared with the row cut as a stream that the stage keeps up with cuts it
(`engines/token2wav_stream.py`: first_chunk frames, then chunk each, every piece solved with
`left`/`right` frames of context and vocoded with `vocoder` frames either side), for several
contexts:

- SNR (dB) and max abs difference of the waveform and of the mel, whole render as reference;
- the step at the seams (mean |x[s] - x[s-1]| at tile boundaries) beside the whole render's step
  at the same samples: a click would show as a larger step;
- CPU seconds (one thread) of a whole render and of the tiles, one row and a batch of rows.

`--stress` reruns the fidelity rows on a copy of the DiT whose blocks have unit-gain weights and
open gates: the tiny random model (weights of std 0.02) barely mixes positions across its
attention blocks, a trained DiT mixes much more, so this shows how fast the error falls with
context where mixing is strong. Run it on a real checkpoint with `--model`.

    .venv/bin/python -m loadtest.token2wav_tiles [--frames 200] [--rows 8] [--stress] [--model DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

CONTEXTS = [(0, 0, 0), (6, 6, 4), (12, 12, 4), (24, 12, 4), (12, 24, 4), (24, 24, 4), (36, 36, 4), (48, 48, 4),
            (12, 12, 2), (12, 12, 8)]


def snr(ref: np.ndarray, x: np.ndarray) -> float:
    noise = float(((ref - x) ** 2).sum())
    return float("inf") if noise == 0 else 10 * np.log10(float((ref ** 2).sum()) / noise)


def load(model_dir: Path | None):
    from omnijobs.engines.factory import create_engine
    from omnijobs.pipelines.spec import StageSpec

    model = str(model_dir) if model_dir else "tiny/qwen2_5_omni/token2wav"
    if model_dir is None:
        from omnijobs.models.tiny import build_tiny
        from omnijobs.settings import get_settings

        models = get_settings().models_dir
        build_tiny(models, only=["tiny/qwen2_5_omni"])
    else:
        models = model_dir.parent
    engine = create_engine(StageSpec(name="token2wav", engine="qwen2_5_omni_token2wav", model=model), "cpu", models)
    engine.load()
    return engine


def stress(dit) -> None:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for block in dit.transformer_blocks:
            for mod in block.modules():
                if isinstance(mod, torch.nn.Linear):
                    mod.weight.copy_(torch.randn(mod.weight.shape, generator=gen) / mod.weight.shape[1] ** 0.5)
            h = block.attn_norm.linear.bias.shape[0] // 6
            block.attn_norm.linear.bias[2 * h: 3 * h] = 1.0  # the attention's gate
            block.attn_norm.linear.bias[5 * h: 6 * h] = 1.0  # the MLP's gate


def whole_render(engine, codes, voice, seed: int, steps: int):
    from omnijobs.engines.token2wav import MelRow, sample_mels, vocode

    mel = sample_mels(engine.model.code2wav_dit_model, [MelRow(codes, voice, torch.Generator().manual_seed(seed))],
                      steps)[0]
    return mel, vocode(engine.model.code2wav_bigvgan_model, [mel])[0].numpy()


def tiled_mel(engine, codes, voice, seed: int, steps: int, tiling) -> np.ndarray:
    """The mel the tiles give their own frames, joined (what BigVGAN's tiles read around the seams)."""
    from omnijobs.engines.token2wav import MelRow, sample_mels
    from omnijobs.engines.token2wav_stream import row_noise

    dit = engine.model.code2wav_dit_model
    n = codes.shape[0]
    noise = row_noise(seed, n, dit.repeats, dit.mel_dim)
    parts = []
    for a, b in tiling.tiles(0, n):
        lo, hi = max(0, a - tiling.left), min(n, b + tiling.right)
        mel = sample_mels(dit, [MelRow(codes[lo:hi], voice, None, offset=lo,
                                       noise=noise[lo * dit.repeats: hi * dit.repeats])], steps)[0]
        parts.append(mel[:, (a - lo) * dit.repeats: (min(b, n) - lo) * dit.repeats])
    return torch.cat(parts, dim=1).numpy()


def fidelity(engine, frames: int, steps: int, seeds: int, first: int, chunk: int) -> None:
    from omnijobs.engines.token2wav_stream import Piece, Tiling, render_pieces

    voice = engine.speakers[sorted(engine.speakers)[0]]
    vocab = engine.num_embeds
    print(f"\n| left | right | vocoder | wave SNR (dB) | wave max diff | mel SNR (dB) | seam step / whole's | peak |")
    print("|---|---|---|---|---|---|---|---|")
    for left, right, vocoder in CONTEXTS:
        tiling = Tiling(first, chunk, left, right, vocoder)
        rows = []
        for seed in range(seeds):
            codes = torch.randint(0, vocab, (frames,), generator=torch.Generator().manual_seed(100 + seed))
            mel, wav = whole_render(engine, codes, voice, seed, steps)
            tiles = render_pieces(engine.model, [Piece(codes, 0, frames, 0, frames, voice, seed, steps)], tiling)[0]
            seams = [b * 480 for _, b in tiling.tiles(0, frames)[:-1]]
            step = np.mean([abs(tiles[s] - tiles[s - 1]) for s in seams])
            step_whole = np.mean([abs(wav[s] - wav[s - 1]) for s in seams])
            rows.append((snr(wav, tiles), np.abs(wav - tiles).max(),
                         snr(mel.numpy(), tiled_mel(engine, codes, voice, seed, steps, tiling)),
                         step / step_whole, np.abs(wav).max()))
        med = np.median(np.array(rows), axis=0)
        print(f"| {left} | {right} | {vocoder} | {med[0]:.1f} | {med[1]:.2e} | {med[2]:.1f} | {med[3]:.2f} | {med[4]:.3f} |")


def cost(engine, frames: int, rows: int, steps: int, first: int, chunk: int, contexts) -> None:
    from omnijobs.engines.token2wav import MelRow, sample_mels, vocode
    from omnijobs.engines.token2wav_stream import Piece, Tiling, render_pieces

    voice = engine.speakers[sorted(engine.speakers)[0]]
    dit, bigvgan = engine.model.code2wav_dit_model, engine.model.code2wav_bigvgan_model

    def cpu(f, repeats: int = 3) -> float:
        best = float("inf")
        for _ in range(repeats):
            t = time.process_time()
            f()
            best = min(best, time.process_time() - t)
        return best

    print(f"\n| rows × frames | whole: DiT + BigVGAN (CPU s) | left/right/vocoder | tiles (CPU s) | tiles / whole |")
    print("|---|---|---|---|---|")
    for b in sorted({1, rows}):
        codes = [torch.randint(0, engine.num_embeds, (frames,), generator=torch.Generator().manual_seed(k))
                 for k in range(b)]
        mels = sample_mels(dit, [MelRow(c, voice, torch.Generator().manual_seed(1)) for c in codes], steps)
        whole = (cpu(lambda: sample_mels(dit, [MelRow(c, voice, torch.Generator().manual_seed(1)) for c in codes],
                                         steps))
                 + cpu(lambda: vocode(bigvgan, mels)))
        for left, right, vocoder in contexts:
            tiling = Tiling(first, chunk, left, right, vocoder)
            pieces = [Piece(c, 0, frames, 0, frames, voice, 1, steps) for c in codes]
            t = cpu(lambda: render_pieces(engine.model, pieces, tiling))
            print(f"| {b} × {frames} | {whole:.3f} | {left}/{right}/{vocoder} | {t:.3f} | {t / whole:.2f}× |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200, help="codec frames per row (20 ms of audio each)")
    parser.add_argument("--rows", type=int, default=8, help="rows of the batched cost measurement")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="DiT ODE steps (the stage's num_steps)")
    parser.add_argument("--first-chunk", type=int, default=10)
    parser.add_argument("--chunk", type=int, default=25)
    parser.add_argument("--stress", action="store_true", help="also on a DiT with unit-gain weights and open gates")
    parser.add_argument("--model", type=Path, default=None, help="a token2wav folder (default: the tiny model)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from loadtest.report import machine

    print(machine())
    engine = load(args.model)
    print(f"\n## Tiles vs whole render: {args.frames} frames, {args.steps} steps, tiles of {args.first_chunk} "
          f"then {args.chunk} frames (median of {args.seeds} seeds)")
    fidelity(engine, args.frames, args.steps, args.seeds, args.first_chunk, args.chunk)
    print(f"\n## CPU cost (one thread), {args.steps} steps, best of 3")
    cost(engine, 64, args.rows, args.steps, args.first_chunk, args.chunk, [(12, 12, 4), (24, 24, 4), (24, 24, 8)])
    cost(engine, args.frames, 1, args.steps, args.first_chunk, args.chunk, [(12, 12, 4)])
    if args.stress:
        stress(engine.model.code2wav_dit_model)
        print("\n## The same on a DiT that mixes strongly (unit-gain block weights, gates open)")
        fidelity(engine, args.frames, args.steps, args.seeds, args.first_chunk, args.chunk)
    print("\n" + machine())


if __name__ == "__main__":
    main()
