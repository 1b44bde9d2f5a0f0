#!/usr/bin/env bash
# The GPU check (issue 15): at most ~8 minutes, torch + timm + scikit-learn (+ CuPy) only;
# no Ray, no FAISS (a bare GPU machine may have neither).
#   bash benchmarks/gpu_check.sh            # from the repository root, the venv's python
#   PYTHON=python3 bash benchmarks/gpu_check.sh
# 1. the gpu-marked tests that need neither Ray nor FAISS; 2. extraction img/s per precision
# and batch size, fp32-vs-bf16/fp16 cosine; 3. CPU decode rate; 4. torch K-means on CUDA.
# Without CUDA the CUDA parts are skipped, each saying why. Record the output, with the date
# and the machine, in benchmarks/RESULTS.md.
set -u
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
export PYTHONPATH=${PYTHONPATH:-$PWD}
echo "== $(date -u +%FT%TZ) $(uname -n), $(nproc) CPUs"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
else
  echo "nvidia-smi: not found (no NVIDIA driver): the CUDA parts will be skipped"
fi
"$PYTHON" -c "import torch; print('CUDA available:', torch.cuda.is_available())"

echo "== 1. gpu-marked tests without Ray or FAISS"
tests=(tests/views)
"$PYTHON" -c "import faiss" 2>/dev/null && tests+=(tests/cluster/test_backends.py)
timeout 240 "$PYTHON" -m pytest -q -p no:cacheprovider -m gpu "${tests[@]}" \
  -k "not ray and not actor" 2>&1 | tail -5 \
  || echo "(gpu tests: none selected, or a timeout; see above)"

echo "== 2-4. measurements"
timeout 300 "$PYTHON" benchmarks/gpu_check.py
echo "== done $(date -u +%FT%TZ)"
