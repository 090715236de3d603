#!/usr/bin/env bash
# The test command: installs what the suite needs, makes sure Postgres and Redis run, runs pytest.
# Each test session creates (and drops) its own Postgres database and uses Redis db 7.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -c tests/constraints.txt -e ".[transformers,diffusers,s3,test]"
# The vLLM stage worker's own environment (its pins clash with the main one's); cached after the first build.
bash tests/vllm_env.sh

# The dashboard's browser test drives Debian's chromium (never a browser download of its own).
if [ ! -x /usr/bin/chromium ]; then
  apt-get update -qq && apt-get install -y -qq chromium >/dev/null
fi
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
  for _ in $(seq 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  for _ in $(seq 30); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 1; done
fi

# pytest exits 5 when it collects nothing: with `set -e` an empty run fails.
exec .venv/bin/python -m pytest "$@"
