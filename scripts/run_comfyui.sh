#!/usr/bin/env bash
# One command from a fresh clone to a running ComfyUI with this pack: creates .venv (if missing),
# installs the pack's dependencies, sets up ComfyUI 0.3.75 in .comfyui/ and starts it on
# http://127.0.0.1:8188 (pass --port N to change). Put model files under .comfyui/ComfyUI/models/.
# GPU users: TORCH_SPEC=torch bash scripts/run_comfyui.sh installs the registry's CUDA build instead
# of the CPU one (then also `pip install torchvision` for ComfyUI's optional video/audio nodes).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
bash scripts/install.sh
exec bash scripts/setup_comfyui.sh --start "$@"
