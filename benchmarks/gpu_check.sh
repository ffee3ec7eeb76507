#!/usr/bin/env bash
# The GPU check in one command (make gpu-check): the machine (nvidia-smi) and the torch / CUDA versions, then
# benchmarks/gpu_check.py, which times every network at the VOC profile's sizes and runs the smoke DAG on CUDA,
# all under one global timeout so that the whole check ends in under 8 minutes.
#
#   bash benchmarks/gpu_check.sh [gpu_check.py options]       e.g. --skip-dag, --parts cls,seg, --budget-s 300
#
# Without a CUDA device it says so and exits 0 without running anything heavy, unless --device cpu is given.
# Environment: GPU_CHECK_TIMEOUT, seconds for gpu_check.py (default 440; it is stopped 15 s after that);
# PYTHON, the interpreter (default: .venv/bin/python when present, else python3).
# Exit code: gpu_check.py's (0 passed, 1 a part failed, 2 environment error, 124 global timeout).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2

if [ -n "${PYTHON:-}" ]; then
  py="$PYTHON"
elif [ -x .venv/bin/python ]; then
  py=.venv/bin/python
else
  py=python3
fi
limit="${GPU_CHECK_TIMEOUT:-440}"
export PYTHONUNBUFFERED=1
# the interpreter's folder first on PATH: the smoke DAG's stages run `python` and `dvc` from there
PATH="$(cd "$(dirname "$(command -v "$py")")" && pwd):$PATH"
export PATH

device=cuda
prev=
for arg in "$@"; do
  case "$arg" in
    -h|--help) exec "$py" benchmarks/gpu_check.py --help ;;
    --device=*) device="${arg#--device=}" ;;
  esac
  [ "$prev" = "--device" ] && device="$arg"
  prev="$arg"
done

started=$(date +%s)
echo "== gpu check $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname 2>/dev/null || echo '?'), $(nproc --all 2>/dev/null || echo '?') CPUs;" \
  "python: $py; limit ${limit} s"
smi_gpus=0
if command -v nvidia-smi >/dev/null 2>&1; then
  timeout 30 nvidia-smi || echo "(nvidia-smi failed with exit code $?)"
  smi_gpus=$(timeout 30 nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
else
  echo "(no nvidia-smi on PATH)"
fi

timeout 120 "$py" - <<'EOF'
import sys

try:
    import torch
except ImportError as err:
    print(f"torch cannot be imported ({err})")
    sys.exit(4)
print(f"python {sys.version.split()[0]}; torch {torch.__version__}; built for CUDA {torch.version.cuda}; "
      f"cuDNN {torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}")
if not torch.cuda.is_available():
    sys.exit(3)
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"cuda:{i} {p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}, "
          f"{p.multi_processor_count} SMs, bf16 {torch.cuda.is_bf16_supported()}")
EOF
torch_rc=$?

if [ "${device%%:*}" != cpu ]; then
  if [ "$torch_rc" = 3 ]; then
    if [ "${smi_gpus:-0}" -gt 0 ]; then
      echo "error: nvidia-smi lists ${smi_gpus} GPU(s) but torch sees no CUDA device (a CPU-only torch build or a" \
        "driver mismatch)"
      exit 2
    fi
    echo "no CUDA device on this machine: GPU check skipped (exit 0). To test the script on the CPU:" \
      "bash benchmarks/gpu_check.sh --device cpu --quick --skip-dag"
    exit 0
  elif [ "$torch_rc" != 0 ]; then
    echo "error: torch check failed (exit code $torch_rc): is $py the project's environment? (make setup)"
    exit 2
  fi
fi

timeout --kill-after=15 "$limit" "$py" benchmarks/gpu_check.py "$@"
rc=$?
case "$rc" in
  124|137) echo "gpu check: stopped by the global timeout of ${limit} s (GPU_CHECK_TIMEOUT)" ;;
esac
echo "== gpu check: exit code $rc after $(( $(date +%s) - started )) s"
exit "$rc"
