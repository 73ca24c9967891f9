#!/usr/bin/env bash
# The GPU checks of issue 7 in one call, for a machine with CUDA: the tests
# marked ``gpu`` (slow ones included), then benchmarks/speed.py on the GPU.
# Logs and tables go to $OUT (default ./gpu-out, both from the folder it is
# called from). DEVICE=cpu gives a dry run of the same steps on the CPU. Needs
# the package's dependencies, the packaged MiniLM and scattertext importable
# (PYTHONPATH is extended with the repository root, so the package need not
# be installed). The extra speed.py options run from the repository root.
#
#   bash benchmarks/gpu_check.sh [extra speed.py options]
set -u
OUT=$(realpath -m "${OUT:-gpu-out}")
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
TEST_SECONDS=${TEST_SECONDS:-180}
SPEED_SECONDS=${SPEED_SECONDS:-330}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv \
        2>/dev/null || echo "no nvidia-smi"
    "$PY" -c "import sys, torch, transformers, captum; print(sys.version.split()[0],
torch.__version__, 'cuda', torch.version.cuda, transformers.__version__,
captum.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available()
else 'no CUDA')"
} 2>&1 | tee "$OUT/machine.txt"

export CAPTUM_EFFATTN_GPU_TESTS_DEVICE=$DEVICE
export CAPTUM_EFFATTN_CACHE=${CAPTUM_EFFATTN_CACHE:-/tmp/captum_effattn_cache}
timeout "$TEST_SECONDS" "$PY" -m pytest -q -m gpu --runslow -p no:cacheprovider \
    -rfEs --durations=5 tests/core/test_gpu.py tests/metrics/test_gpu_metrics.py \
    tests/attr/test_attribution.py tests/benchmark/test_bench.py \
    >"$OUT/gpu_tests.log" 2>&1
tests_rc=$?
echo "gpu tests: exit $tests_rc" | tee -a "$OUT/machine.txt"
tail -n 25 "$OUT/gpu_tests.log"

timeout "$SPEED_SECONDS" "$PY" benchmarks/speed.py --device "$DEVICE" \
    --markdown "$OUT/speed.md" --json "$OUT/speed.json" "$@" 2>"$OUT/speed.log"
speed_rc=$?
echo "speed.py: exit $speed_rc" | tee -a "$OUT/machine.txt"
tail -n 12 "$OUT/speed.log"
# a failure of either part is the script's (it printed both first)
exit $((tests_rc != 0 || speed_rc != 0))
