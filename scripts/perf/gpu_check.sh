#!/usr/bin/env bash
# One script a lent GPU runs as is (from the repository root): DiT-XL/2 Minimax fine-tuning step time and memory at
# the preset's batch 8, sampling throughput batched vs batch 1, and bf16 vs fp32 sampling, all with random weights
# (scripts/perf/paper_scale_smoke.py). The GPU machine lacks diffusers: carry wheels in .whl/ (see the device tool's
# README) and they are installed first. Results: $OUT/gpu_check.json (or results/perf/gpu_check.json).
set -euo pipefail
cd "$(dirname "$0")/../.."
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
out="${OUT:-results/perf}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
PYTHONUNBUFFERED=1 python3 scripts/perf/paper_scale_smoke.py --device cuda --batch 8 --steps 6 --images 8 --compare \
  --json "$out/gpu_check.json"
