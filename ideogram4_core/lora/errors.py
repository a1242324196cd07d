"""Errors of LoRA files. Each message names the file and says what was found and what was expected,
so a node can show `str(error)` unchanged. Pickles are refused by the shared safetensors reader
(files/errors.NotSafetensorsError) before any byte is deserialised."""

from __future__ import annotations

from ..files.errors import CheckpointError


class LoraError(CheckpointError):
    """Base class: the file cannot be applied to an Ideogram 4 transformer."""


class NotIdeogram4LoraError(LoraError):
    """A LoRA (or other file) whose keys name modules an Ideogram 4 transformer does not have."""


class LoraShapeError(LoraError):
    """An Ideogram 4 LoRA whose tensors do not fit the loaded model (another size, a broken rank).
    `mismatches` lists each problem."""

    def __init__(self, message: str, path=None, mismatches: list[str] | None = None):
        super().__init__(message, path)
        self.mismatches = list(mismatches or [])


class UnsupportedLoraError(LoraError):
    """A kind of adapter this pack does not apply (LoKr, LoHa, DoRA, OFT, full diffs, conv LoCon)."""
