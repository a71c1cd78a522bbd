#!/usr/bin/env bash
# The GPU check (tests/gpu/README.md): every training stage of the smoke study on CUDA with the
# rules' command lines, DDP over nccl through torchrun, the default study's pretraining and one
# QAT job timed, a GPU-trained model's ONNX evaluated on the CPU; evidence written to a folder.
#
#   tests/gpu/run_gpu_check.sh [EVIDENCE_DIR] [--dry-run] [--quick] [--jobs N] [--budget S]
#                              [--default auto|full|small|skip] [--no-ddp] [--no-pytest] [--work DIR]
#
# EVIDENCE_DIR defaults to $OUT (the device tool's output folder). Without CUDA (or with
# --dry-run, which hides it) every stage runs on the CPU and the evidence says "dry run: no CUDA".
# PYTHON picks the interpreter (default: the repository's .venv where it works, else python3).
# Exit status: 0 when every job ran with exit 0 (and, on CUDA, trained on the GPU), else 1.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
EVIDENCE=${OUT:-}
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
    EVIDENCE=$1
    shift
fi
if [ -z "$EVIDENCE" ]; then
    echo "usage: $0 EVIDENCE_DIR [options] (or set OUT)" >&2
    exit 2
fi
mkdir -p "$EVIDENCE"
EVIDENCE=$(cd "$EVIDENCE" && pwd)

if [ -z "${PYTHON:-}" ]; then
    if [ -x "$ROOT/.venv/bin/python" ] && "$ROOT/.venv/bin/python" -c 'import torch' 2>/dev/null; then
        PYTHON=$ROOT/.venv/bin/python
    else
        PYTHON=$(command -v python3 || command -v python)
    fi
fi

dry=""
for arg in "$@"; do [ "$arg" = "--dry-run" ] && dry=1; done

# The machine, before anything runs: one text file of the evidence.
{
    echo "# quantdet GPU check: the machine ($(date -Is))"
    echo "repository: $ROOT ($(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo 'not a git checkout'))"
    echo "git status:"; git -C "$ROOT" status --short 2>/dev/null | head -50
    echo "python: $PYTHON ($("$PYTHON" -VV 2>&1))"
    echo "uname: $(uname -a)"
    echo "cpus: $(nproc 2>/dev/null)"
    echo "CUDA_VISIBLE_DEVICES: ${CUDA_VISIBLE_DEVICES-unset}${dry:+ (--dry-run: hidden from every job)}"
    echo
    echo "## nvidia-smi"
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi 2>&1
        nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv 2>&1
    else
        echo "nvidia-smi: not found"
    fi
    echo
    echo "## pip list"
    "$PYTHON" -m pip list --disable-pip-version-check 2>&1
} > "$EVIDENCE/system.txt" 2>&1

cd "$ROOT" || exit 2
"$PYTHON" "$ROOT/tests/gpu/gpu_check.py" run --evidence "$EVIDENCE" "$@" 2>&1 | tee "$EVIDENCE/run.log"
status=${PIPESTATUS[0]}
# nvidia-smi after the jobs: the GPU's state (memory, processes left behind)
if command -v nvidia-smi >/dev/null; then
    { echo; echo "## nvidia-smi after the check"; nvidia-smi 2>&1; } >> "$EVIDENCE/system.txt"
fi
exit "$status"
