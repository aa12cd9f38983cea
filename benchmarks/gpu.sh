#!/usr/bin/env bash
# radjax on one NVIDIA H200 vs eager and compiled PyTorch; stops by itself in under 8 minutes.
#
#   bash benchmarks/gpu.sh                  # the GPU run; report in $OUT/gpu_bench.txt (else ./)
#   bash benchmarks/gpu.sh --cpu            # dry run: tiny shapes on the CPU (the test suite's)
#   bash benchmarks/gpu.sh --models vit3d,sam --impls radjax,torch --out report.txt
#
# Every other option, the models and how to read the table: benchmarks/gpu.py's docstring
# (python -m benchmarks.gpu --help). Nothing is downloaded: the run uses the Python packages
# installed here (PYTHON, else the repo's .venv, else python3); Python wheels laid in
# GPU_BENCH_WHEELS (default .whl/, as the device machine's README carries them) are installed
# offline into a scratch folder first. The repository itself is put on PYTHONPATH, not installed.
# GPU_BENCH_HARD_LIMIT (default 470 s): the wall-clock limit past which `timeout` stops the
# driver (its own --budget, 440 s, normally ends the run first; the report is rewritten after
# every row, so a stopped run keeps the rows it measured).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

wheels=${GPU_BENCH_WHEELS:-.whl}
if compgen -G "$wheels/*.whl" >/dev/null; then
  site=${TMPDIR:-/tmp}/radjax_gpu_bench_site
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" "$wheels"/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec timeout -k 10 "${GPU_BENCH_HARD_LIMIT:-470}" "$PYTHON" -m benchmarks.gpu "$@"
