"""Out of memory while loading, encoding, sampling or decoding: release what the failed stage
held, then raise an error that says what to change.

The error raised is still a `torch.OutOfMemoryError` (ComfyUI's `OOM_EXCEPTION`), so ComfyUI's
own handling runs as well: it unloads all models and appends its generic tip. A CPU allocation
failure (a plain RuntimeError from the CPU allocator) and ROCm/MPS messages are recognised too.
"""

from __future__ import annotations

import gc
import traceback

import torch

import comfy.model_management

from ..ideogram4_core.memory import release_freed_heap

# What to change, per stage; the message names the node and input to touch.
FIXES = {
    "loading": "load the NF4 release or set quantization to 'nf4' in Load Ideogram 4 Models (about 5.2 GB per "
               "transformer instead of 9.3 GB FP8 or 18.6 GB bf16), or start ComfyUI with --lowvram",
    "encoding": "use the FP8 text encoder file or set quantization to 'nf4' in Load Ideogram 4 Text Encoder "
                "(about 4.5 GB), or start ComfyUI with --lowvram",
    "sampling": "use a smaller size or batch_size in Ideogram 4 Empty Latent, load the transformers as NF4 "
                "(quantization 'nf4'), or start ComfyUI with --lowvram",
    "generating": "lower max_tokens in Ideogram 4 Magic Prompt / Describe, load the FP8 or NF4 text encoder, "
                  "or start ComfyUI with --lowvram",
    "encoding the image": "set tile_size to 512 (or 256) in Ideogram 4 VAE Encode, or use a smaller image "
                          "(size_mode resize, or Ideogram 4 Inpaint Crop's resolution)",
    "decoding": "set tile_size to 512 (or 256) in Ideogram 4 VAE Decode, use a smaller size or batch_size, "
                "or start ComfyUI with --lowvram",
}
_ALLOCATOR_MESSAGES = ("DefaultCPUAllocator: can't allocate memory", "out of memory", "MPS backend out of memory")


class Ideogram4OutOfMemoryError(torch.OutOfMemoryError):
    """Out of memory in one stage of the pack; the message says what to change."""


def _oom_types() -> tuple[type[BaseException], ...]:
    types = {torch.OutOfMemoryError}
    comfy_oom = getattr(comfy.model_management, "OOM_EXCEPTION", None)
    if isinstance(comfy_oom, type) and comfy_oom is not Exception:  # ComfyUI falls back to Exception
        types.add(comfy_oom)
    return tuple(types)


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, _oom_types()):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in _ALLOCATOR_MESSAGES)


def release_memory() -> None:
    gc.collect()
    release_freed_heap()
    comfy.model_management.soft_empty_cache()


class oom_guard:
    """`with oom_guard("sampling", "1024x1024, batch 1"):` turns an out-of-memory error inside the
    block into an Ideogram4OutOfMemoryError with the fix for that stage, after dropping the
    failed frames' tensors (the original traceback would otherwise keep them alive) and
    collecting garbage. Any other exception passes through unchanged."""

    def __init__(self, stage: str, what: str = ""):
        if stage not in FIXES:
            raise ValueError(f"unknown stage {stage!r}")
        self.stage, self.what = stage, what

    def __enter__(self) -> "oom_guard":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None or isinstance(exc, Ideogram4OutOfMemoryError) or not is_out_of_memory(exc):
            return False
        cause = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        traceback.clear_frames(tb)  # the finished frames below us held activations / weights
        exc.__traceback__ = None
        del exc, tb
        release_memory()
        where = f" ({self.what})" if self.what else ""
        error = Ideogram4OutOfMemoryError(
            f"Ideogram 4 ran out of memory while {self.stage}{where}: {cause}. To fix: {FIXES[self.stage]}. "
            "The memory this run held has been released; the server is ready for the next prompt.")
        raise error from None
