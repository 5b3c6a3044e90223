#!/usr/bin/env bash
# One prepared check for a borrowed GPU machine, finishing in at most 8 minutes:
#   1. stops with one sentence (exit 2) unless a CUDA GPU is visible;
#   2. installs the Python packages the machine lacks (omegaconf, PyYAML if needed) from the wheels carried in .whl/ (`make wheels`
#      downloads them on a machine with network), into a temporary folder on PYTHONPATH;
#   3. runs the `gpu`-marked tests (their pass/fail line is recorded in the JSON);
#   4. times a faithful PEMS08 96->96 training epoch for kernel_backend=chunked and the PyTorch loop, fp32 and bf16
#      (benchmarks/gpu_epoch.py; random PEMS08-shaped batches unless STM3_DATA_DIR holds PEMS08/),
#   and writes benchmarks/results/gpu.json naming the GPU.
#
#   bash benchmarks/gpu_check.sh          # or: make gpu-check
# Environment: PYTHON (default python3), GPU_CHECK_JSON (default benchmarks/results/gpu.json).
# Needs no network, no wandb and no compiler; the repository's src/ is used in place (nothing is installed into it).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
PYTHON=${PYTHON:-python3}
JSON=${GPU_CHECK_JSON:-benchmarks/results/gpu.json}
SITE=$(mktemp -d "${TMPDIR:-/tmp}/stm3-gpu-site.XXXXXX")
trap 'rm -rf "$SITE"' EXIT
export PYTHONPATH="$PWD/src:$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export WANDB_MODE=disabled PYTHONUNBUFFERED=1 MPLBACKEND=Agg
START=$SECONDS

fail() {
    echo "$1" >&2
    exit 2
}

elapsed() {
    echo "== $1 ($((SECONDS - START)) s since start)"
}

"$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 3)' 2>/dev/null
case $? in
    0) ;;
    3) fail "No CUDA GPU is visible (torch.cuda.is_available() is False); run this script on a GPU machine." ;;
    *) fail "$PYTHON cannot import torch; set PYTHON to the interpreter that has PyTorch with CUDA." ;;
esac
"$PYTHON" -c 'import torch; p = torch.cuda.get_device_properties(0); print(f"GPU: {p.name}, torch {torch.__version__}, CUDA {torch.version.cuda}")'

elapsed "packages"
MISSING=()
"$PYTHON" -c 'import omegaconf' 2>/dev/null || MISSING+=(omegaconf)
"$PYTHON" -c 'import yaml' 2>/dev/null || MISSING+=(PyYAML)
if ((${#MISSING[@]})); then
    compgen -G ".whl/*.whl" >/dev/null \
        || fail "Python packages ${MISSING[*]} are missing and .whl/ holds no wheels; run \`make wheels\` where there is network and carry .whl/ along."
    "$PYTHON" -m pip install -q --no-index --find-links .whl --no-deps --no-compile --no-cache-dir --target "$SITE" \
        "${MISSING[@]}" \
        || fail "Installing ${MISSING[*]} from .whl/ failed (see pip's message above); rerun \`make wheels\` for this machine."
    echo "   installed from .whl/: ${MISSING[*]}"
fi

elapsed "gpu-marked tests"
mapfile -t GPU_TESTS < <(grep -rl --include='test_*.py' "pytest.mark.gpu" tests | sort)
((${#GPU_TESTS[@]})) || fail "No test module under tests/ is marked gpu; run this script from a complete checkout."
TEST_LOG="$SITE/gpu-tests.log"
timeout 270 "$PYTHON" -m pytest -q -p no:cacheprovider -m gpu "${GPU_TESTS[@]}" 2>&1 | tee "$TEST_LOG"
TESTS_RC=${PIPESTATUS[0]}
TESTS_LINE=$(grep -E '(passed|failed|error|skipped|no tests ran)' "$TEST_LOG" | tail -n 1 | sed 's/=//g; s/^ *//; s/ *$//')
[[ $TESTS_RC == 124 ]] && TESTS_LINE="timed out after 270 s: $TESTS_LINE"

elapsed "training epoch benchmark"
timeout 180 "$PYTHON" -m benchmarks.gpu_epoch --device cuda --out "$JSON" \
    --gpu-tests "$TESTS_LINE" --gpu-tests-exit-code "$TESTS_RC"
BENCH_RC=$?
[[ $BENCH_RC == 124 ]] && echo "The epoch benchmark ran past its 180 s limit; $JSON is incomplete or missing." >&2

elapsed "done"
echo "gpu tests: ${TESTS_LINE:-none} (exit $TESTS_RC); benchmark exit $BENCH_RC; results in $JSON"
if ((TESTS_RC != 0 || BENCH_RC != 0)); then
    exit 1
fi
