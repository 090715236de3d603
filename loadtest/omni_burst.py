"""Omni burst: N text jobs at once through thinker → talker → speech decoder, vs the full model one job at a time.

For each omni pipeline (`qwen2_5_omni`, `qwen3_omni`): OmniJobs runs one worker per stage; the
baseline is what a user writes with transformers alone — the family's full model class
(`Qwen2_5OmniForConditionalGeneration`, `Qwen3OmniMoeForConditionalGeneration`) and its own
`generate`, which runs thinker, talker and speech decoder one after another, one job at a time.
The full model is assembled from the same stage checkpoints the workers load (or loaded from
`--full-model` when a released checkpoint is at hand). Same prompts, params and seeds: thinker
32 tokens, talker exactly 64 codes (min = max, so both sides speak the same length),
token2wav 10 steps.

    .venv/bin/python -m loadtest.omni_burst [--jobs 64] [--pipelines qwen2_5_omni,qwen3_omni] [--repeats 3]
"""

from __future__ import annotations

import time
from pathlib import Path

from loadtest.report import (
    add_cpu_rows,
    baseline_metrics,
    burst_table,
    common_args,
    configure_baseline_threads,
    job_metrics,
    machine,
)
from loadtest.stack import Stack

THINKER = {"temperature": 0.7, "top_p": 1.0}
SYSTEM = "You are a helpful assistant."
STAGES = {"qwen2_5_omni": ["thinker", "talker", "token2wav"], "qwen3_omni": ["thinker", "talker", "code2wav"]}
RATE = 24000


def prompt(i: int) -> str:
    return f"Tell me something about item number {i}."


def chat_text(i: int) -> str:
    return (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{prompt(i)}<|im_end|>\n"
            "<|im_start|>assistant\n")


def job_params(pipeline: str, seed: int, thinker_tokens: int, talker_codes: int, steps: int) -> dict:
    params = {"seed": seed, "thinker": {"max_tokens": thinker_tokens, **THINKER},
              "talker": {"max_tokens": talker_codes, "min_tokens": talker_codes}}
    if pipeline == "qwen2_5_omni":
        params["token2wav"] = {"num_steps": steps}
    return params


def load_full_model(pipeline: str, stages_dir: Path, full: Path | None, device: str):
    """The family's full model and its tokenizer, as a user of transformers would hold them."""
    import torch
    import transformers as tf

    tf.logging.set_verbosity_error()
    if pipeline == "qwen2_5_omni":
        full_cls = tf.Qwen2_5OmniForConditionalGeneration
        parts = {"thinker": tf.Qwen2_5OmniThinkerForConditionalGeneration,
                 "talker": tf.Qwen2_5OmniTalkerForConditionalGeneration, "token2wav": tf.Qwen2_5OmniToken2WavModel}
    else:
        full_cls = tf.Qwen3OmniMoeForConditionalGeneration
        parts = {"thinker": tf.Qwen3OmniMoeThinkerForConditionalGeneration,
                 "talker": tf.Qwen3OmniMoeTalkerForConditionalGeneration, "code2wav": tf.Qwen3OmniMoeCode2Wav}
    if full is not None:
        model = full_cls.from_pretrained(full, torch_dtype="auto")
        tokenizer = tf.AutoTokenizer.from_pretrained(full)
        return model.to(device).eval(), tokenizer
    tokenizer = tf.AutoTokenizer.from_pretrained(stages_dir / "thinker")
    loaded = {name: cls.from_pretrained(stages_dir / name) for name, cls in parts.items()}
    configs = {f"{name}_config": m.config.to_dict() for name, m in loaded.items()}
    ids = tokenizer.convert_tokens_to_ids
    extra = {} if pipeline == "qwen2_5_omni" else {
        "im_start_token_id": ids("<|im_start|>"), "system_token_id": ids("system"), "user_token_id": ids("user"),
        "assistant_token_id": ids("assistant"), "tts_bos_token_id": ids("<tts_text_bos>"),
        "tts_eos_token_id": ids("<tts_text_eod>"), "tts_pad_token_id": ids("<tts_pad>")}
    config = full_cls.config_class(**configs, enable_audio_output=True, **extra)
    with torch.device("meta"):  # every part is replaced by its loaded stage next
        model = full_cls(config)
    for name, part in loaded.items():
        # The speech decoders run in float32, as the stage engines and the full model's generate run them.
        setattr(model, name, part.float() if name in ("token2wav", "code2wav") else part)
    if pipeline == "qwen2_5_omni":
        model.load_speakers(stages_dir / "token2wav" / "spk_dict.pt")
    return model.to(device).eval(), tokenizer


class Baseline:
    def __init__(self, pipeline: str, stages_dir: Path, full: Path | None, device: str):
        self.pipeline = pipeline
        self.device = device
        self.model, self.tokenizer = load_full_model(pipeline, stages_dir, full, device)

    def generate(self, i: int, thinker_tokens: int, talker_codes: int, steps: int) -> tuple[int, float]:
        """One job; returns (thinker tokens, audio seconds)."""
        import torch

        enc = self.tokenizer(chat_text(i), return_tensors="pt").to(self.device)
        im_end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        common = dict(thinker_max_new_tokens=thinker_tokens, thinker_do_sample=True, thinker_top_k=0,
                      thinker_temperature=THINKER["temperature"], thinker_top_p=THINKER["top_p"],
                      talker_max_new_tokens=talker_codes, talker_min_new_tokens=talker_codes, talker_top_k=0,
                      talker_temperature=0.9, talker_repetition_penalty=1.0)
        torch.manual_seed(i)
        with torch.no_grad():
            if self.pipeline == "qwen2_5_omni":
                talker = self.model.talker
                seq, wav = self.model.generate(**enc, speaker="Chelsie", talker_top_p=0.8, token2wav_num_steps=steps,
                                               talker_eos_token_id=[talker.codec_eos_token, talker.codec_pad_token],
                                               **common)
            else:
                seq, wav = self.model.generate(**enc, speaker="ethan", talker_top_p=1.0, thinker_eos_token_id=im_end,
                                               **common)
        return seq.shape[1] - enc["input_ids"].shape[1], wav.numel() / RATE

    def run(self, n: int, *sizes: int) -> dict:
        started, ends, tokens, audio = time.perf_counter(), [], 0, 0.0
        for i in range(n):
            t, a = self.generate(i, *sizes)
            tokens, audio = tokens + t, audio + a
            ends.append(time.perf_counter())
        metrics = baseline_metrics(started, ends)
        return {**metrics, "work_per_s": audio / metrics["wall_s"], "tokens_per_job": tokens / n,
                "audio_per_job": audio / n}


def omni_run(stack: Stack, pipeline: str, n: int, *sizes: int) -> dict:
    bodies = [{"pipeline": pipeline, "inputs": {"prompt": prompt(i)}, "params": job_params(pipeline, i, *sizes)}
              for i in range(n)]
    jobs, cpu = stack.run_burst(bodies, connections=min(n, 64))
    tokens = sum(next(s for s in j["stages"] if s["name"] == "thinker")["outputs"]["usage"]["completion_tokens"]
                 for j in jobs)
    audio = sum(next(s for s in j["stages"] if s["name"] == STAGES[pipeline][2])["outputs"]["usage"]["seconds"]
                for j in jobs)
    metrics = job_metrics(jobs)
    return {**metrics, "work_per_s": audio / metrics["wall_s"], "tokens_per_job": tokens / n,
            "audio_per_job": audio / n, "cpu_per_job": {s: c / n for s, c in cpu.items()}}


def main() -> None:
    parser = common_args(__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=64)
    parser.add_argument("--pipelines", default="qwen2_5_omni,qwen3_omni")
    parser.add_argument("--thinker-tokens", type=int, default=32)
    parser.add_argument("--talker-codes", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="token2wav diffusion steps (Qwen2.5-Omni)")
    parser.add_argument("--models", type=Path, default=None, help="OMNIJOBS_MODELS_DIR (default: the settings')")
    parser.add_argument("--full-model", action="append", default=[], metavar="PIPELINE=PATH",
                        help="a released full checkpoint for the baseline, e.g. qwen2_5_omni=/models/Qwen2.5-Omni-7B")
    parser.add_argument("--baseline-threads", type=int, default=1, help="torch threads of the baseline process")
    args = parser.parse_args()
    print(machine())
    configure_baseline_threads(args.baseline_threads)
    from omnijobs.engines.factory import resolve_model_path
    from omnijobs.models.tiny import build_tiny
    from omnijobs.pipelines import load_registry
    from omnijobs.settings import get_settings

    models = args.models or get_settings().models_dir
    full = dict(f.split("=", 1) for f in args.full_model)
    sizes = (args.thinker_tokens, args.talker_codes, args.steps)
    registry = load_registry()
    for pipeline in args.pipelines.split(","):
        spec = registry.get(pipeline)
        stages_dir = resolve_model_path(spec.stages["thinker"].model, models).parent
        if args.models is None:
            build_tiny(models, only=[str(stages_dir.relative_to(models))])
        baseline = Baseline(pipeline, stages_dir, Path(full[pipeline]) if pipeline in full else None,
                            "cpu" if args.device == "cpu" else args.device)
        base, omni = [], []
        with Stack(models_dir=models, device=args.device, keep_logs=args.keep_logs) as stack:
            stack.start_workers([f"{pipeline}.{s}" for s in STAGES[pipeline]])
            baseline.run(1, 4, 4, 2)  # warm-up of both sides
            omni_run(stack, pipeline, 2, 4, 4, 2)
            for _ in range(args.repeats):
                base.append(baseline.run(args.jobs, *sizes))
                omni.append(omni_run(stack, pipeline, args.jobs, *sizes))
        del baseline
        table = burst_table(f"Omni burst: {args.jobs} `{pipeline}` text jobs at once (thinker {args.thinker_tokens} "
                            f"tokens, talker {args.talker_codes} codes"
                            + (f", token2wav {args.steps} steps" if pipeline == "qwen2_5_omni" else "")
                            + f"; {args.repeats} repeat(s))", "full model `generate`, one job at a time", base, omni,
                            work="audio seconds made per second")
        table.add("thinker tokens per job (same work?)", [b["tokens_per_job"] for b in base],
                  [o["tokens_per_job"] for o in omni], 1)
        table.add("audio seconds per job (same work?)", [b["audio_per_job"] for b in base],
                  [o["audio_per_job"] for o in omni], 2)
        add_cpu_rows(table, omni, [f"{pipeline}.{s}" for s in STAGES[pipeline]])
        table.print([f"Baseline: one process, {args.baseline_threads} torch thread(s); OmniJobs: one worker per stage "
                     "(OMNIJOBS_TORCH_THREADS=1) + the API, all on this machine.", machine()])


if __name__ == "__main__":
    main()
