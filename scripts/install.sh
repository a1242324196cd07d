#!/usr/bin/env bash
# Install the pack's Python dependencies (and the test extra) into the active virtual environment.
# torch comes first and alone: asking for it through the pack's range would let pip pick the newest
# CUDA build (several GB) on machines where a CPU build is what is wanted.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
python -m pip install -q "$TORCH_SPEC"
python -m pip install -q -e ".[test]"
python -m pip list 2>/dev/null | grep -Ei '^(torch|transformers|diffusers|bitsandbytes|safetensors|jsonschema) '
