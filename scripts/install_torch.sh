#!/usr/bin/env bash
# Install torch with a matching torchvision and torchaudio into the active virtual environment, the
# three packages a complete ComfyUI imports. Does nothing when all three already import together.
#
# Default: torch 2.9.1 + torchvision 0.24.1 + torchaudio 2.9.1 from PyPI, a set in which all three
# import on a CPU-only machine too (checked on x86_64; torchaudio releases trail torch's, so a plain
# `pip install torch torchvision torchaudio` can pair mismatched builds). On Linux x86_64 PyPI's
# wheels of that set are the CUDA 12.8 build: they use an NVIDIA GPU when `nvidia-smi` finds one and
# run on the CPU otherwise (with the CUDA libraries: 3.9 GB of wheels either way). PyPI's wheels for
# aarch64, macOS and Windows have no CUDA; for an NVIDIA GPU there, use PyTorch's own index, e.g.
# TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128.
#
# Overrides: TORCH_PACKAGES="torch==X torchvision==Y torchaudio==Z" (a matching set), TORCH_INDEX_URL.
set -euo pipefail
TORCH_PACKAGES=${TORCH_PACKAGES:-"torch==2.9.1 torchvision==0.24.1 torchaudio==2.9.1"}
say() { echo "[install_torch] $*"; }

gpu=""
if gpu=$(nvidia-smi -L 2>/dev/null | head -n 1) && [[ -n "$gpu" ]]; then
  say "NVIDIA GPU found: $gpu"
  case "$(uname -m)" in
    x86_64) ;;
    *) [[ -n "${TORCH_INDEX_URL:-}" ]] || say "WARNING: PyPI has no CUDA build of torch for $(uname -m); set TORCH_INDEX_URL (see the top of this script)" ;;
  esac
else
  say "no NVIDIA GPU found (nvidia-smi): torch will run on the CPU"
fi

probe='import torch, torchvision, torchaudio; print(torch.__version__, torchvision.__version__, torchaudio.__version__, torch.cuda.is_available())'
if have=$(python -c "$probe" 2>/dev/null); then
  say "already installed, all three import: torch torchvision torchaudio cuda = $have"
  [[ -n "$gpu" && "$have" == *False ]] && say "WARNING: a GPU is there but this torch cannot use it; to replace it: python -m pip uninstall -y torch torchvision torchaudio, then run this script again"
  exit 0
fi

say "installing $TORCH_PACKAGES"
t0=$SECONDS
index_args=()
[[ -n "${TORCH_INDEX_URL:-}" ]] && index_args=(--index-url "$TORCH_INDEX_URL")
# shellcheck disable=SC2086  # TORCH_PACKAGES is a list of requirement specifiers
python -m pip install --progress-bar off ${index_args[@]+"${index_args[@]}"} $TORCH_PACKAGES
have=$(python -c "$probe")
say "done in $((SECONDS - t0)) s: torch torchvision torchaudio cuda = $have"
