#!/usr/bin/env bash
# The README's quick start: one command from a fresh clone to a running, complete ComfyUI 0.3.75 with
# this pack, at http://127.0.0.1:8188 (pass --port N to change). Put model files under
# .comfyui/ComfyUI/models/. Steps, each timed:
#   1. .venv (created if missing)
#   2. torch + torchvision + torchaudio that import together (scripts/install_torch.sh: the CUDA
#      build on Linux x86_64, which also runs on the CPU; overrides are documented there)
#   3. ComfyUI 0.3.75 with every one of its requirements, unpatched (scripts/setup_comfyui.py)
#   4. the pack's requirements.txt, installed the way ComfyUI users install a pack
#   5. boot check (the pack's nodes and core's UpscaleModelLoader / LoadAudio served, no failed
#      import), then the server in the foreground
set -euo pipefail
cd "$(dirname "$0")/.."
step() { echo "[quick start] $1 (${SECONDS} s elapsed)"; }

step "1/5 virtual environment .venv"
[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
step "2/5 torch, torchvision, torchaudio"
bash scripts/install_torch.sh
step "3/5 ComfyUI 0.3.75 and its requirements"
python scripts/setup_comfyui.py --no-boot-check
step "4/5 the pack's requirements (pip install -r requirements.txt)"
python -m pip install --progress-bar off -r requirements.txt
step "5/5 boot check, then start the server"
exec python scripts/setup_comfyui.py --start "$@"
