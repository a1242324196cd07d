"""The ComfyUI front end in Debian's Chromium, driven by Playwright (no browser download): what the
browser tests and scripts/make_template.py share.

Front ends: the one the ComfyUI tree pins in its requirements.txt (1.32.9 for 0.3.75, 1.49.6 for
0.33), installed in the server's Python, and newer ones that `scripts/setup_comfyui.sh --frontend
VERSION` unpacks under `<repo>/.comfyui/frontends/VERSION/` (another folder: `IDEOGRAM4_FRONTENDS_DIR`,
e.g. when IDEOGRAM4_COMFYUI_DIR names a tree elsewhere), served with `--front-end-root`.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import re
import threading
from pathlib import Path

from comfy_host import REPO, ComfyHost, comfyui_dir, require_comfyui

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


def frontends_dir() -> Path:
    """Where `setup_comfyui.sh --frontend V` puts extra front ends (`<dir>/<V>/`)."""
    env = os.environ.get("IDEOGRAM4_FRONTENDS_DIR")
    return Path(env).resolve() if env else REPO / ".comfyui" / "frontends"


def frontend_root(version: str) -> Path | None:
    """--front-end-root for `version`, or None for the pinned one (checked to be the installed one).
    Raises FileNotFoundError, naming the command that installs it, when it is not there."""
    if version == pinned_frontend():
        installed = importlib.metadata.version("comfyui_frontend_package")
        if installed != version:
            raise FileNotFoundError(f"the Python environment has front end {installed}, the host pins {version}")
        return None
    root = frontends_dir() / version / "comfyui_frontend_package" / "static"
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


# Browser waits only guard against a hang: generous, never a speed limit (a loaded 2-core machine
# can take minutes to boot a front end).
HANG_GUARD_MS = 600_000


# The front end's start-up opens a first workflow (the default graph) after `window.app` exists, and
# that load replaces whatever graph is open: a test that builds its graph before it ends can lose it
# on a loaded machine. The active workflow is set once that first load is done (1.32.9 to 1.58.1).
STARTUP_DONE = "() => !!window.app?.extensionManager?.workflow?.activeWorkflow"


def open_app(page, url: str, ready: str = APP_READY, timeout_ms: int = HANG_GUARD_MS) -> None:
    page.set_default_timeout(timeout_ms)  # every later wait, click and navigation of this page too
    page.goto(url)
    page.wait_for_function(ready, timeout=timeout_ms)
    page.wait_for_function(STARTUP_DONE, timeout=timeout_ms)


def required(reason: str) -> None:
    """Skip the test, or fail it under CI (CI or IDEOGRAM4_REQUIRE_COMFYUI set)."""
    import pytest

    if any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
           for k in ("CI", "IDEOGRAM4_REQUIRE_COMFYUI")):
        pytest.fail(reason + " — required under CI", pytrace=False)
    pytest.skip(reason)


@contextlib.contextmanager
def serving(versions):
    """{version: started host, or why there is none} for the browser tests: one server per
    front end, booted in parallel (boot is the slow part), stopped at the end. Take a host with
    `pick`. Missing pieces skip (fail under CI)."""
    require_comfyui()
    try:
        import playwright  # noqa: F401
    except ImportError:
        required("Python package playwright missing: pip install playwright")
    if not CHROMIUM.is_file():
        required(f"no {CHROMIUM}: apt-get install -y chromium")
    servers, missing = {}, {}
    for version in dict.fromkeys(versions):
        try:
            servers[version] = host_with_frontend(version)
        except FileNotFoundError as exc:  # reported by `pick`, for the tests that need it
            missing[version] = str(exc)
    errors = []

    def start(host):
        try:
            host.start()
        except Exception as exc:  # reported below, in the caller's thread
            errors.append(repr(exc))

    threads = [threading.Thread(target=start, args=(h,)) for h in servers.values()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors, errors
        for host in servers.values():
            assert host.pack_import_failures() == [], host.pack_import_failures()
        yield {**servers, **missing}
    finally:
        for host in servers.values():
            host.stop()


def pick(hosts: dict, version: str) -> ComfyHost:
    """The host `serving` started for `version`; skips (fails under CI) when there is none."""
    host = hosts[version]
    if isinstance(host, str):
        required(host)
    return host
