"""Reading a LoRA file: safetensors only, through the pack's bounded reader (files/safetensors_io:
header checked against the file size, pickles refused by name and by content, never unpickled)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from ..files.safetensors_io import TensorReader, read_header
from .formats import convert_state_dict
from .layers import LoraWeights


@dataclass(frozen=True)
class LoraFile:
    path: Path
    format: str  # e.g. "ai-toolkit: prefix diffusion_model., lora_A/lora_B, 10 layers, rank 16"
    layers: dict[str, LoraWeights]  # {our original weight key: update}

    @property
    def nbytes(self) -> int:
        return sum(w.nbytes for w in self.layers.values())


def load_lora(path: str | Path, shapes: Mapping[str, tuple[int, int]]) -> LoraFile:
    """Read and convert a LoRA for a model whose LoRA-able layers have `shapes`
    (layers.linear_shapes). Raises a files.errors.CheckpointError subclass with a message for people."""
    path = Path(path)
    header = read_header(path)
    with TensorReader(header) as reader:
        state = {name: reader.read(name) for name in header.tensors}
    layers, description = convert_state_dict(state, shapes, header.metadata, source=str(path))
    return LoraFile(path, description, layers)
