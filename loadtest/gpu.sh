#!/usr/bin/env bash
# The benchmark suite on a GPU machine with real checkpoints: the same commands and tables as on CPU,
# every stage worker and every baseline on --device cuda:$GPU.
#
#   CHAT_MODEL=/models/Qwen2.5-0.5B-Instruct \
#   QWEN2_5_OMNI_STAGES=/models/qwen2_5_omni_stages \     # thinker/ talker/ token2wav/ (+ spk_dict.pt)
#   QWEN3_OMNI_STAGES=/models/qwen3_omni_stages \         # thinker/ talker/ code2wav/
#   QWEN_IMAGE_MODEL=/models/Qwen-Image \                 # a diffusers folder (model_index.json)
#   bash loadtest/gpu.sh [noop intake chat omni image]    # default: all
#
# Each *_STAGES folder holds one `save_pretrained` folder per stage, named as the stage (what the
# workers load; a full checkpoint's stages saved separately, every weight present). Optional:
# QWEN2_5_OMNI_FULL / QWEN3_OMNI_FULL, the released full checkpoint, for the baseline to load
# with the model's own from_pretrained (default: assembled from the stage folders). A benchmark
# whose model variable is unset is skipped and says so; TINY=1 runs every one with the tiny
# models instead (a check that the suite runs on CUDA, not a measurement of real models).
#
# Also: GPU (index, default 0), REPEATS (3), JOBS (the benchmarks' defaults), IMAGE_SIZE (512),
# IMAGE_STEPS (20), PYTHON (.venv/bin/python), OMNIJOBS_BENCH_PG_ADMIN (the Postgres server the
# benchmarks create their databases on; default postgresql+psycopg://postgres@127.0.0.1:5432/postgres).
# Needs redis-server on PATH (each benchmark starts its own on a free port).
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
GPU=${GPU:-0}
DEVICE=${DEVICE:-cuda:$GPU}
REPEATS=${REPEATS:-3}
WHAT=("$@")
[ ${#WHAT[@]} -gt 0 ] || WHAT=(noop intake chat omni image)

command -v redis-server >/dev/null || { echo "redis-server is not on PATH (apt-get install redis-server)" >&2; exit 2; }
"$PYTHON" - <<'EOF' || { echo "Postgres is not reachable; set OMNIJOBS_BENCH_PG_ADMIN" >&2; exit 2; }
import os, sqlalchemy as sa
url = os.environ.get("OMNIJOBS_BENCH_PG_ADMIN", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
with sa.create_engine(url).connect() as conn:
    conn.execute(sa.text("SELECT 1"))
EOF
if [[ "$DEVICE" == cuda* ]]; then
  "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || { echo "torch in $PYTHON sees no CUDA device (install a CUDA build of torch 2.13.0)" >&2; exit 2; }
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=index,name,memory.total,utilization.gpu --format=csv
fi

# The pipelines name their models relative to OMNIJOBS_MODELS_DIR (tiny/qwen2, tiny/qwen2_5_omni/thinker, ...):
# a models folder of links puts the real checkpoints where the shipped pipelines look.
MODELS=$(mktemp -d -t omnijobs-gpu-models-XXXXXX)
trap 'rm -rf "$MODELS"' EXIT
mkdir -p "$MODELS/tiny"
if [ "${TINY:-0}" = 1 ]; then
  "$PYTHON" -m omnijobs models build-tiny >/dev/null
  TINY_DIR=$("$PYTHON" -c "from omnijobs.settings import get_settings; print(get_settings().models_dir)")/tiny
  CHAT_MODEL=$TINY_DIR/qwen2 QWEN2_5_OMNI_STAGES=$TINY_DIR/qwen2_5_omni QWEN3_OMNI_STAGES=$TINY_DIR/qwen3_omni
  QWEN_IMAGE_MODEL=$TINY_DIR/qwen_image IMAGE_SIZE=${IMAGE_SIZE:-32} IMAGE_STEPS=${IMAGE_STEPS:-4}
  echo "TINY=1: the tiny models on $DEVICE"
fi
link() {  # link <folder under tiny/> <path or empty>
  if [ -n "$2" ]; then
    [ -e "$2" ] || { echo "$2 does not exist" >&2; exit 2; }
    ln -s "$(realpath "$2")" "$MODELS/tiny/$1"
  fi
}
link qwen2 "${CHAT_MODEL:-}"
link qwen2_5_omni "${QWEN2_5_OMNI_STAGES:-}"
link qwen3_omni "${QWEN3_OMNI_STAGES:-}"
link qwen_image "${QWEN_IMAGE_MODEL:-}"

common=(--repeats "$REPEATS" --device "$DEVICE")
jobs=(); [ -n "${JOBS:-}" ] && jobs=(--jobs "$JOBS")
skip() { echo; echo "## $1: skipped ($2 is not set)"; }

for what in "${WHAT[@]}"; do
  case "$what" in
    noop) "$PYTHON" -m loadtest.noop_pipeline "${common[@]}" "${jobs[@]}" ;;
    intake) "$PYTHON" -m loadtest.intake --repeats "$REPEATS" ;;
    chat)
      if [ -n "${CHAT_MODEL:-}" ]; then "$PYTHON" -m loadtest.chat_burst "${common[@]}" "${jobs[@]}" --models "$MODELS"
      else skip "chat burst" CHAT_MODEL; fi ;;
    omni)
      pipelines=(); full=()
      if [ -n "${QWEN2_5_OMNI_STAGES:-}" ]; then pipelines+=(qwen2_5_omni)
        [ -n "${QWEN2_5_OMNI_FULL:-}" ] && full+=(--full-model "qwen2_5_omni=$QWEN2_5_OMNI_FULL")
      else skip "qwen2_5_omni burst" QWEN2_5_OMNI_STAGES; fi
      if [ -n "${QWEN3_OMNI_STAGES:-}" ]; then pipelines+=(qwen3_omni)
        [ -n "${QWEN3_OMNI_FULL:-}" ] && full+=(--full-model "qwen3_omni=$QWEN3_OMNI_FULL")
      else skip "qwen3_omni burst" QWEN3_OMNI_STAGES; fi
      if [ ${#pipelines[@]} -gt 0 ]; then
        "$PYTHON" -m loadtest.omni_burst "${common[@]}" "${jobs[@]}" --models "$MODELS" \
          --pipelines "$(IFS=,; echo "${pipelines[*]}")" "${full[@]}"
      fi ;;
    image)
      if [ -n "${QWEN_IMAGE_MODEL:-}" ]; then
        "$PYTHON" -m loadtest.image_burst "${common[@]}" "${jobs[@]}" --models "$MODELS" \
          --size "${IMAGE_SIZE:-512}" --steps "${IMAGE_STEPS:-20}"
      else skip "qwen_image burst" QWEN_IMAGE_MODEL; fi ;;
    *) echo "unknown benchmark '$what' (noop intake chat omni image)" >&2; exit 2 ;;
  esac
done
