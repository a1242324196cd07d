"""The ComfyUI front end in Debian's Chromium, driven by Playwright (no browser download): what the
browser tests and scripts/make_template.py share.

Front ends: the one the ComfyUI tree pins in its requirements.txt (1.32.9 for 0.3.75, 1.49.6 for
0.33), installed in the server's Python, and newer ones that `scripts/setup_comfyui.sh --frontend
VERSION` unpacks under `<ComfyUI>/../frontends/VERSION/`, served with `--front-end-root`.
"""
from __future__ import annotations

import importlib.metadata
import json
import re
from pathlib import Path

from comfy_host import ComfyHost, comfyui_dir

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
NEWEST_FRONTEND = "1.58.1"  # the newest release tested; .ci/run installs it

# The page is ready when the app has its graph and our node types are registered.
APP_READY = """() => !!(window.app && window.app.graph && window.LiteGraph
    && LiteGraph.registered_node_types['Ideogram4Sampler'])"""


def pinned_frontend(comfy_dir: Path | None = None) -> str:
    """The front-end version the ComfyUI tree pins (comfyui-frontend-package==X in requirements.txt)."""
    text = ((comfy_dir or comfyui_dir()) / "requirements.txt").read_text()
    found = re.search(r"^comfyui[-_]frontend[-_]package\s*==\s*([\w.]+)", text, re.M | re.I)
    if not found:
        raise ValueError("the ComfyUI tree's requirements.txt pins no comfyui-frontend-package")
    return found.group(1)


def frontend_root(version: str) -> Path | None:
    """--front-end-root for `version`, or None for the pinned one (checked to be the installed one).
    Raises FileNotFoundError, naming the command that installs it, when it is not there."""
    if version == pinned_frontend():
        installed = importlib.metadata.version("comfyui_frontend_package")
        if installed != version:
            raise FileNotFoundError(f"the Python environment has front end {installed}, the host pins {version}")
        return None
    root = comfyui_dir().parent / "frontends" / version / "comfyui_frontend_package" / "static"
    if not (root / "index.html").is_file():
        raise FileNotFoundError(f"no front end {version} at {root}: run "
                                f"`bash scripts/setup_comfyui.sh --frontend {version}`")
    return root


def host_with_frontend(version: str, settings: dict | None = None, **kwargs) -> ComfyHost:
    """A (not yet started) test host serving front end `version`, first-run tour switched off."""
    root = frontend_root(version)
    extra = list(kwargs.pop("extra_args", ()))
    host = ComfyHost(extra_args=extra + (["--front-end-root", str(root)] if root else []), **kwargs)
    path = host.base_dir / "user" / "default" / "comfy.settings.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"Comfy.TutorialCompleted": True, **(settings or {})}))
    return host


def launch(playwright):
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


def open_app(page, url: str, ready: str = APP_READY, timeout_ms: int = 90_000) -> None:
    page.goto(url)
    page.wait_for_function(ready, timeout=timeout_ms)
