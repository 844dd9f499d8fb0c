#!/usr/bin/env bash
# What a session lent a GPU machine runs there, in one go (the machine's own python3, which
# holds a CUDA build of torch; convscope is used from the checkout, not installed):
# the CUDA tests, the benchmarks with --device cuda, and the CPU recipe search on its cores.
# Each part is time-limited so the whole fits one call; the logs go to $OUT (or ./gpu-logs).
set -u
out=${OUT:-gpu-logs}; mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
{ nvidia-smi -L; python3 -c 'import torch; print("torch", torch.__version__)'; nproc
  grep -m1 'model name' /proc/cpuinfo; grep -o -m1 avx512_bf16 /proc/cpuinfo || echo "no avx512_bf16"
} > "$out/machine.txt" 2>&1
if [ -z "${SKIP_SEARCH:-}" ]; then
  timeout ${SEARCH_S:-260} python3 bench/choose_fast.py --workers 7 --threads 2 \
      --seeds ${SEEDS:-0 1 2 3 4 5 6 7 8 9} ${ONLY:+--only $ONLY} > "$out/choose_fast.txt" 2>&1
  echo "choose_fast exit $?" >> "$out/choose_fast.txt"
fi
[ -n "${SEARCH_ONLY:-}" ] && exit 0
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py \
    tests/test_mixed_precision.py ${MORE_TESTS:-} > "$out/test_cuda.txt" 2>&1
echo "pytest exit $?" >> "$out/test_cuda.txt"
{ timeout 60 python3 bench/time_to_99.py --device cuda --seeds 0 1 2
  timeout 40 python3 bench/learner_vs_loop.py --device cuda
  timeout 40 python3 bench/optimizer_step.py --device cuda
} > "$out/bench_cuda.txt" 2>&1
tail -n 20 "$out"/*.txt
