"""Autoregressive stages on vLLM: one engine per worker, fed request by request.

`runtime` builds vLLM's engine from a stage's `engine_args`, `prompts` turns a stage request into
what vLLM takes (token ids, images), `params` maps a row's params onto `SamplingParams`, and
`engine` is the Engine (batch `run`, and the add/step/abort calls continuous batching uses).
Only this package imports vllm, and only inside a worker that hosts a vLLM stage.
"""
