#!/usr/bin/env bash
# GPU readiness of the curvature engine and training, on one CUDA GPU (H100/H200: < 8 min).
#
#   bash bench/gpu.sh [results dir]      # default bench/results; writes bench_gpu.json
#   bash bench/gpu.sh --cpu-smoke [dir]  # no GPU needed: every section at small sizes (~2 min)
#
# Runs bench/bench_gpu.py (its docstring lists the sections) with the Python on PATH, or
# $PYTHON. The trace section compares with PyHessian: pip install -e ".[bench]".
set -euo pipefail

usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; }

smoke=0
results=""
for arg in "$@"; do
    case "$arg" in
        --cpu-smoke) smoke=1 ;;
        -h | --help) usage; exit 0 ;;
        -*) echo "unknown option $arg" >&2; usage >&2; exit 2 ;;
        *) results="$arg" ;;
    esac
done

if [[ -n $results && $results != /* ]]; then
    results="$PWD/$results"  # as given, before moving to the repository root
fi
cd "$(dirname "$0")/.."
python="${PYTHON:-python}"
if [[ $smoke == 1 ]]; then
    results="${results:-${TMPDIR:-/tmp}/hessvalley-bench-gpu-smoke}"
    args=(--device cpu --quick)
    echo "CPU smoke run (--cpu-smoke): small sizes, figures not meaningful"
else
    if ! command -v nvidia-smi > /dev/null || ! nvidia-smi -L > /dev/null 2>&1; then
        echo "no NVIDIA GPU here (nvidia-smi is missing or finds none): run this on a GPU" \
            "machine, or pass --cpu-smoke to check the script on the CPU" >&2
        exit 2
    fi
    results="${results:-bench/results}"
    args=(--device cuda)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi

"$python" bench/bench_gpu.py "${args[@]}" --results-dir "$results"
echo "JSON: $results/bench_gpu.json"
if [[ $smoke == 0 && $results == bench/results ]]; then
    echo "put its figures in README's table: $python bench/readme_table.py --write"
fi
