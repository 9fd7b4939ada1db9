#!/usr/bin/env bash
# ResNet34 224px and ratings throughput on a CUDA machine; see benchmarks/gpu_check.py.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY=python
cd "$ROOT"
PYTHONPATH="$ROOT/src:$ROOT${PYTHONPATH:+:$PYTHONPATH}" exec "$PY" -m benchmarks.gpu_check "$@"
