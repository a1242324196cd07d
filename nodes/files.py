"""Model names arriving from the UI or the HTTP API resolve only through ComfyUI's model folders:
a name must be one that we listed ourselves, so `..`, absolute paths and unknown names are refused
before any file is opened."""

from __future__ import annotations

import os
from pathlib import Path

import folder_paths

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


def resolve_model(folder_name: str, name: str, folder_markers: tuple[str, ...]) -> Path:
    """The full path of a listed model, or a ValueError that says what is allowed."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"no {folder_name} model selected")
    if os.path.isabs(name) or ".." in Path(name.rstrip("/")).parts or "\\" in name:
        raise ValueError(f"refused model name {name!r}: names are relative to the {folder_name} folder, without '..'")
    if name not in list_models(folder_name, folder_markers):
        raise ValueError(
            f"{name!r} is not in ComfyUI's {folder_name} folder(s) {folder_paths.get_folder_paths(folder_name)}; "
            "put the file there (or refresh the page) and pick it from the list"
        )
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
