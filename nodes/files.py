"""Model names arriving from the UI or the HTTP API resolve only through ComfyUI's model folders:
a name must be one that we listed ourselves, so `..`, absolute paths and unknown names are refused
before any file is opened."""

from __future__ import annotations

import os
from pathlib import Path

import folder_paths

from ..ideogram4_core.files.safetensors_io import PICKLE_SUFFIXES

FOLDER_SUFFIX = "/"  # folder entries are shown with a trailing slash, files without


def _is_model_folder(path: Path, markers: tuple[str, ...]) -> bool:
    return path.is_dir() and any((path / m).exists() for m in markers)


def list_models(folder_name: str, folder_markers: tuple[str, ...]) -> list[str]:
    """Model folders (one level below each configured directory, containing one of `markers`)
    followed by single .safetensors files. Only safetensors are ever listed: we never unpickle."""
    folders = set()
    for root in folder_paths.get_folder_paths(folder_name):
        if os.path.isdir(root):
            for entry in sorted(os.listdir(root)):
                if _is_model_folder(Path(root, entry), folder_markers):
                    folders.add(entry + FOLDER_SUFFIX)
    files = [f for f in folder_paths.get_filename_list(folder_name) if f.lower().endswith(".safetensors")]
    # Files inside a listed model folder belong to that folder, not to the single-file list.
    files = [f for f in files if f.split("/")[0] + FOLDER_SUFFIX not in folders]
    return sorted(folders) + sorted(files)


def model_name_problem(folder_name: str, name, folder_markers: tuple[str, ...], input_name: str = "model") -> str | None:
    """Why `name` cannot be loaded from `folder_name` (None when it can): it must be a string that
    is one of our own listed entries; pickles, absolute paths and '..' are named as such. Runs at
    POST /prompt time (validate_inputs) and again before loading."""
    if not isinstance(name, str):
        return (f"{input_name} must be a model name (text) picked from the list, got {type(name).__name__} "
                f"{repr(name)[:80]}")
    if not name:
        return f"no {folder_name} model selected in {input_name}; pick one from the list"
    if os.path.isabs(name) or ".." in Path(name.rstrip("/")).parts or "\\" in name or "\0" in name:
        return (f"refused model name {name[:200]!r}: names are relative to the {folder_name} folder, without "
                "'..' or an absolute path; pick a model from the list")
    if Path(name).suffix.lower() in PICKLE_SUFFIXES:
        return (f"refused {name[:200]!r}: '{Path(name).suffix}' files are Python pickles, and unpickling a file can "
                "run code from it, so this pack never reads them. Use the .safetensors release of the model.")
    if name not in list_models(folder_name, folder_markers):
        return (f"{name[:200]!r} is not in ComfyUI's {folder_name} folder(s) {folder_paths.get_folder_paths(folder_name)}; "
                "put the .safetensors file (or model folder) there, refresh the page and pick it from the list")
    return None


def check_model_name(input_name: str, name, folder_name: str, folder_markers: tuple[str, ...]) -> bool | str:
    """For `validate_inputs`: True, or why the name is refused (see model_name_problem). None is
    what ComfyUI passes for a linked input: it is checked again when the node runs."""
    if name is None:
        return True
    return model_name_problem(folder_name, name, folder_markers, input_name) or True


def resolve_model(folder_name: str, name: str, folder_markers: tuple[str, ...]) -> Path:
    """The full path of a listed model, or a ValueError that says what is allowed."""
    problem = model_name_problem(folder_name, name, folder_markers)
    if problem:
        raise ValueError(problem)
    for root in folder_paths.get_folder_paths(folder_name):
        candidate = Path(root, name.rstrip("/"))
        if candidate.exists():
            return candidate
    raise ValueError(f"{name!r} disappeared from the {folder_name} folder; refresh the list")


def file_fingerprint(path: Path) -> str:
    """Size and modification time of a file or of every file in a folder: changes when a model is
    replaced on disk, so ComfyUI's cache reloads it instead of serving the old weights."""
    paths = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    stats = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
    return repr(stats)


def check_choice(input_name: str, value, options) -> bool | str:
    """For `validate_inputs`: True, or a message naming the input, the bad value and the choices.
    ComfyUI 0.3.75 does not check V3 combo values when a prompt is queued, so each node does."""
    options = list(options)
    if value in options:
        return True
    shown = ", ".join(repr(o) for o in options[:12]) + (" ..." if len(options) > 12 else "")
    return f"{input_name}: {value!r} is not one of the choices ({shown or 'none available: add the files first'})"


def first_problem(*checks) -> bool | str:
    for result in checks:
        if result is not True:
            return result
    return True

