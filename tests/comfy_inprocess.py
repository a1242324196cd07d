"""Run a script inside the real ComfyUI library (not a server) with this pack imported the way
ComfyUI imports a custom node folder, in a fresh subprocess.

For checks that need ComfyUI's own objects up close: the MODEL's state-dict keys, ComfyUI's LoRA
key map, its weight patching and unpatching on our layers, forward passes of a patched model.
Whole graphs are tested through a real server (`comfy_host.ComfyHost`) instead.

    result = run_in_comfy(INPROCESS / "model_keys.py", {"model": str(path)}, out_dir=tmp_path)

The script sees `pack` (the imported pack package, e.g. `pack.nodes.comfy_model.wrap_dit`), `args`
(the dict given) and `out_dir` (a folder for tensors it hands back, e.g. with safetensors), and
stores its JSON-able answer in a global named `result`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from comfy_host import PACK_NAME, REPO, comfyui_dir, require_comfyui, tree_env

_BOOTSTRAP = r"""
import importlib.util, json, runpy, sys
from pathlib import Path
script, args_path, out_dir, repo, name = sys.argv[1:6]
sys.argv = ["main.py", "--cpu"]
import comfy.options
comfy.options.enable_args_parsing()
import comfy.model_management  # noqa: F401  (device set-up, as at server start)
spec = importlib.util.spec_from_file_location(name, Path(repo) / "__init__.py",
                                              submodule_search_locations=[repo])
pack = importlib.util.module_from_spec(spec)
sys.modules[name] = pack
spec.loader.exec_module(pack)
import importlib
importlib.import_module(name + ".nodes")
pack = sys.modules[name]
args = json.loads(Path(args_path).read_text())
scope = runpy.run_path(script, init_globals={"pack": pack, "args": args, "out_dir": Path(out_dir)})
Path(out_dir, "result.json").write_text(json.dumps(scope["result"]))
"""


INPROCESS = Path(__file__).parent / "inprocess"


def run_in_comfy(script: Path, args: dict | None = None, out_dir: Path | None = None, timeout: float = 600) -> dict:
    require_comfyui()
    with tempfile.TemporaryDirectory(prefix="comfy-inprocess-") as tmp:
        args_path = Path(tmp) / "args.json"
        args_path.write_text(json.dumps(args or {}))
        out_dir = Path(out_dir or tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "tests"), str(REPO)]),
                   HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TQDM_DISABLE="1", **tree_env())
        proc = subprocess.run(
            [sys.executable, "-c", _BOOTSTRAP, str(Path(script).resolve()), str(args_path), str(out_dir),
             str(REPO), PACK_NAME.replace("-", "_")],
            cwd=comfyui_dir(), env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise AssertionError(f"{script} failed inside ComfyUI (exit {proc.returncode}):\n"
                                 f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
        result = json.loads((out_dir / "result.json").read_text())
        result["log"] = proc.stdout + proc.stderr
        return result
