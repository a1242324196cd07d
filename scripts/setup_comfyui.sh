#!/usr/bin/env bash
# Set up a headless ComfyUI 0.3.75 host with this pack (see scripts/setup_comfyui.py --help).
# Uses $PYTHON, else the repo's .venv, else python3.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$repo/.venv/bin/python" ]]; then PYTHON="$repo/.venv/bin/python"; else PYTHON=python3; fi
fi
exec "$PYTHON" "$here/setup_comfyui.py" "$@"
