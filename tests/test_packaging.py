"""How the pack installs: requirements.txt, pyproject.toml and its Comfy Registry metadata.

Users add the pack through ComfyUI-Manager, the Comfy Registry or `git clone` + `pip install -r
requirements.txt` into ComfyUI's own environment, so requirements.txt is the install contract.
Rules checked here (docs.comfy.org "registry/specifications", comfy-cli's config parser):
- requirements.txt and [project].dependencies list the same requirements, and never torch;
- every third-party module the pack imports at run time is either the host's (ComfyUI and what
  it ships with) or named in requirements.txt;
- [tool.comfy] and [project] carry what the Registry needs to list and publish the pack.
"""
from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())

# Modules that ComfyUI itself provides or installs (its own modules, torch, aiohttp for its server).
HOST_MODULES = {"torch", "comfy", "comfy_api", "comfy_execution", "folder_paths", "latent_preview", "server",
                "nodes", "aiohttp", "numpy"}  # numpy: ComfyUI's own requirements.txt installs it
TORCH_FAMILY = {"torch", "torchvision", "torchaudio"}


def requirements_file() -> list[Requirement]:
    lines = (REPO / "requirements.txt").read_text().splitlines()
    return [Requirement(line.split("#")[0].strip()) for line in lines if line.split("#")[0].strip()]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_imports() -> set[str]:
    """Top-level modules imported anywhere in the pack's run-time code (not tests, not scripts)."""
    files = [REPO / "__init__.py", *(REPO / "ideogram4_core").rglob("*.py"), *(REPO / "nodes").rglob("*.py")]
    modules = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return {m for m in modules if m not in sys.stdlib_module_names and m not in {"ideogram4_core", "nodes"}}


def test_requirements_equal_pyproject_dependencies():
    from_file = {str(r) for r in requirements_file()}
    from_pyproject = {str(Requirement(d)) for d in PYPROJECT["project"]["dependencies"]}
    assert from_file == from_pyproject, (
        f"only in requirements.txt: {sorted(from_file - from_pyproject)}; "
        f"only in pyproject.toml: {sorted(from_pyproject - from_file)}")


def test_no_torch_and_every_requirement_has_a_floor():
    for req in requirements_file():
        assert canonical(req.name) not in TORCH_FAMILY, f"{req}: the host's torch must never be replaced"
        floors = [s for s in req.specifier if s.operator == ">="]
        assert len(floors) == 1 and not [s for s in req.specifier if s.operator in ("==", "<", "<=", "~=")], (
            f"{req}: use one `>=` floor and no upper bound or pin, so that pip keeps what ComfyUI installed")


def test_every_runtime_import_is_the_hosts_or_a_requirement():
    declared = {canonical(r.name) for r in requirements_file()}
    dists = importlib.metadata.packages_distributions()
    missing = []
    for module in sorted(runtime_imports() - HOST_MODULES):
        names = {canonical(d) for d in dists.get(module, [module])}
        if not names & declared:
            missing.append(f"{module} (distribution {sorted(names)})")
    assert not missing, f"imported at run time but not in requirements.txt: {missing}"
    # and nothing is required that the pack never imports
    imported = {canonical(d) for m in runtime_imports() for d in dists.get(m, [m])}
    assert declared <= imported, f"required but never imported: {sorted(declared - imported)}"


def test_registry_metadata():
    project, comfy = PYPROJECT["project"], PYPROJECT["tool"]["comfy"]
    # [project].name is the Registry node id: < 100 chars, alphanumerics with single - _ . between
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]*(?:[-_.][A-Za-z0-9]+)*", project["name"]) and len(project["name"]) < 100
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"]), "the Registry wants a X.Y.Z version"
    assert project.get("description"), "description"
    assert project["license"] == {"file": "LICENSE"} or project["license"].get("text"), "license"
    repository = project["urls"]["Repository"]
    assert repository.startswith("https://"), "Repository URL"
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]*", comfy["PublisherId"]), "PublisherId"
    assert comfy["DisplayName"], "DisplayName"
    # the icon is a URL to a square image that this repository ships (the Registry shows it)
    icon = comfy["Icon"]
    prefix = repository.replace("https://github.com/", "https://raw.githubusercontent.com/") + "/main/"
    assert icon.startswith(prefix), f"Icon {icon!r} should point into this repository ({prefix}...)"
    icon_path = REPO / icon[len(prefix):]
    assert icon_path.is_file(), f"{icon_path} missing"
    width, height = png_size(icon_path)
    assert width == height <= 400, f"icon is {width}x{height}; the Registry wants a square of at most 400 px"
    # requires-comfyui: the oldest ComfyUI the server tests ran on (docs/comfyui-host.md)
    floor = [s for s in SpecifierSet(comfy["requires-comfyui"]) if s.operator == ">="]
    assert floor and Version(floor[0].version) >= Version("0.3.75"), comfy["requires-comfyui"]
    for classifier in project.get("classifiers", []):
        if classifier.startswith("Operating System :: "):
            assert classifier.split(" :: ")[1] in ("Microsoft", "POSIX", "MacOS", "OS Independent"), classifier
        if classifier.startswith("Environment :: "):
            assert classifier[len("Environment :: "):] in (
                "GPU :: NVIDIA CUDA", "GPU :: AMD ROCm", "GPU :: Intel Arc", "NPU :: Huawei Ascend",
                "GPU :: Apple Metal"), classifier
    # `web` would register web/ a second time under the project name (WEB_DIRECTORY already does)
    assert "web" not in comfy


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
