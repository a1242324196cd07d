"""Memory estimates the host's memory manager plans with (spec §H.2)."""

from __future__ import annotations

import ctypes
import functools

import torch
from torch import nn

from .constants import TEXT_ENCODER_TAP_LAYERS
from .model.quant import dequantized_bytes
from .model.transformer import Ideogram4Config


def weight_bytes(module: nn.Module) -> int:
    """Bytes of every weight, buffer and bitsandbytes quantisation statistic (NF4 keeps its block
    scales in a `quant_state` beside the packed weight, which `parameters()` does not see)."""
    total = 0
    for tensor in [*module.parameters(), *module.buffers()]:
        total += tensor.numel() * tensor.element_size()
        state = getattr(tensor, "quant_state", None)
        if state is not None:
            for part in (getattr(state, "absmax", None), getattr(state, "code", None)):
                if isinstance(part, torch.Tensor):
                    total += part.numel() * part.element_size()
    return total


def dit_activation_bytes(config: Ideogram4Config, batch: int, seq_len: int, masked: bool, dtype_bytes: int = 2) -> int:
    """Peak activation memory of one forward pass, generously rounded: the widest live tensors are
    the FFN's two (L, intermediate) branches, the QKV output and a few residual copies; a dense
    boolean mask costs L^2 bytes per row when captions of different lengths share a batch."""
    per_token = 3 * config.intermediate_size + 6 * config.hidden_size + config.llm_features_dim
    total = batch * seq_len * per_token * dtype_bytes
    if masked:
        total += batch * seq_len * seq_len
    return int(total * 1.5)


def dit_inference_bytes(model, batch: int, seq_len: int, masked: bool) -> int:
    """What one forward of the DiT `model` needs on the compute device beyond its resident weights:
    activations in its compute dtype plus the dequantisation workspace of its quantised layers."""
    dtype = model.compute_dtype
    size = torch.empty((), dtype=dtype).element_size()
    return dit_activation_bytes(model.config, batch, seq_len, masked, size) + dequant_workspace_bytes(model, dtype)


def text_encoder_inference_bytes(language_model: nn.Module, tokens: int) -> int:
    """What encoding one caption of `tokens` tokens needs on the compute device beyond the resident
    weights, generously rounded: the fp32 taps (13 x hidden a token), the MLP's intermediate
    branches and a few hidden-state copies in the compute dtype, attention scores in case SDPA takes
    its math path, plus the dequantisation workspace of quantised layers."""
    cfg = language_model.config
    dtype = language_model.embed_tokens.weight.dtype
    size = torch.empty((), dtype=dtype).element_size()
    per_token = len(TEXT_ENCODER_TAP_LAYERS) * cfg.hidden_size * 4 + (3 * cfg.intermediate_size + 8 * cfg.hidden_size) * size
    scores = cfg.num_attention_heads * tokens * tokens * size
    return int(1.5 * (tokens * per_token + scores)) + dequant_workspace_bytes(language_model, dtype)


def dequant_workspace_bytes(model: nn.Module, dtype: torch.dtype) -> int:
    """Device memory beyond weights and activations while `model` runs: its largest FP8 / NF4 layer
    dequantised to `dtype` (each quantised layer materialises its float weight per call, resident
    or streamed; one at a time). 0 for a model without quantised layers."""
    return max((dequantized_bytes(m, dtype) for m in model.modules()), default=0)


def release_freed_heap() -> None:
    """Hand freed heap pages back to the OS (glibc only; a no-op elsewhere).

    glibc raises its mmap threshold after the first large free, so later temporaries come from the
    heap, and the holes they leave between long-lived tensors are never returned: without this,
    quantising a 473 MB fp32 file to FP8 peaked at 846 MB for a 121 MB model, and a server kept
    the activations of a failed (out-of-memory) run as resident memory."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


def generation_bytes(language_model: nn.Module, tokens: int, vision_patches: int = 0, vision_config=None) -> int:
    """What decoding `tokens` tokens (prompt + generated) needs on the compute device beyond the
    resident weights, generously rounded: the KV cache of every layer, the prefill's widest
    activations (the MLP's intermediate branches, a few hidden-state copies, attention scores in
    case SDPA takes its math path), float32 logits, the dequantisation workspace of quantised
    layers; for an image also the vision tower's activations over its patches."""
    cfg = language_model.config
    dtype = language_model.embed_tokens.weight.dtype
    size = torch.empty((), dtype=dtype).element_size()
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_cache = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * tokens * size
    prefill = tokens * (3 * cfg.intermediate_size + 8 * cfg.hidden_size) * size + cfg.num_attention_heads * tokens**2 * size
    logits = 4 * cfg.vocab_size * 4
    vision = 0
    if vision_patches:
        vision = vision_patches * (3 * vision_config.intermediate_size + 8 * vision_config.hidden_size) * size
        vision += vision_config.num_heads * vision_patches**2 * size
    return int(1.5 * (kv_cache + prefill + logits + vision)) + dequant_workspace_bytes(language_model, dtype)
