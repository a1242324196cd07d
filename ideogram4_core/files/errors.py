"""Errors and warnings raised while reading model files.

Every message names the file, says what was found and what was expected, so a node can show
`str(error)` to the user unchanged.
"""

from __future__ import annotations

from pathlib import Path


class CheckpointError(Exception):
    """Base class: the file cannot be loaded as an Ideogram 4 model. `path` is the file at fault."""

    def __init__(self, message: str, path: str | Path | None = None):
        super().__init__(message)
        self.path = None if path is None else Path(path)


class NotSafetensorsError(CheckpointError):
    """Refused without reading: a pickle (.ckpt/.pt/.pth/.bin), GGUF or other non-safetensors file."""


class CorruptCheckpointError(CheckpointError):
    """A safetensors file whose header or data region is malformed, truncated or implausible."""


class NotIdeogram4Error(CheckpointError):
    """A valid safetensors file that holds some other model (Flux, SD, a text encoder, a VAE...)."""


class CheckpointMismatchError(CheckpointError):
    """An Ideogram 4 file whose tensors do not fit the architecture. `mismatches` lists each problem."""

    def __init__(self, message: str, path: str | Path | None = None, mismatches: list[str] | None = None):
        super().__init__(message, path)
        self.mismatches = list(mismatches or [])


class UnsupportedQuantizationError(CheckpointError):
    """The file uses a quantisation this pack cannot run (e.g. bnb FP4, NVFP4, int8)."""


class SameCheckpointWarning(UserWarning):
    """The conditional and the unconditional model were given the same file.

    Emitted with `warnings.warn` (a node can record it with `warnings.catch_warnings(record=True)`);
    `checkpoint.same_checkpoint_warning()` returns the same text without emitting anything.
    """
