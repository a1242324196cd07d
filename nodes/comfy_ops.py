"""Our DiT and text-encoder layers as layers ComfyUI can offload (the `comfy.ops` protocol).

ComfyUI's model manager (ModelPatcher.load / partially_unload, for --lowvram, --novram,
--reserve-vram and partial loading) may leave any module that has a `comfy_cast_weights` attribute
on the offload device and set that flag: the module must then copy its weights to the input's
device on every call and pass them through its `weight_function` / `bias_function` lists (LoRA
patches of streamed layers, weight wrappers). `make_offloadable(model)` gives every module with
weights that ability, in place: each module's class is swapped for a subclass, so parameters,
state-dict keys and numbers stay the same.

- FP8Linear and bitsandbytes NF4 linears copy their raw FP8 / NF4 bytes and dequantise them on the
  compute device on every call (ideogram4_core.model.quant), like city96/ComfyUI-GGUF's layers; the
  weight functions see the dequantised float weight. One path whether the layer is resident or
  streamed, so a partial load gives exactly the numbers of a full load.
- Every other module with weights (nn.Linear, nn.Embedding, the RMSNorms, ...) uses ComfyUI's own
  `cast_bias_weight`, then runs its own forward on the copies.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

import comfy.model_management
import comfy.ops
from comfy.ops import CastWeightBiasOp

from ..ideogram4_core.model import quant


def make_offloadable(model: nn.Module) -> nn.Module:
    """Swap the class of every module of `model` that holds weights for its offloadable twin."""
    for name, module in model.named_modules():
        if isinstance(module, CastWeightBiasOp):
            continue
        if isinstance(module, quant.FP8Linear):
            module.__class__ = OffloadableFP8Linear
        elif quant.is_nf4_layer(module):
            module.__class__ = _nf4_class()
        elif any(True for _ in module.parameters(recurse=False)):
            if any(True for _ in module.children()):
                # ComfyUI's load list skips such modules, so their weights would never move.
                raise TypeError(f"{name} ({type(module).__name__}) holds weights and submodules; "
                                "split its own weights into a leaf module so ComfyUI can place them")
            module.__class__ = _cast_class(type(module))
            if not hasattr(module, "bias"):  # cast_bias_weight reads `bias`
                module.bias = None
    return model


class _CastLayer(CastWeightBiasOp):
    """Mixin: copy weight and bias to the input's device with ComfyUI's cast_bias_weight (async
    offload streams, weight/bias functions), then run the module's own forward on the copies."""

    def forward(self, *args, **kwargs):
        comfy.ops.run_every_op()  # ComfyUI's per-op interrupt check (Cancel)
        if not (self.comfy_cast_weights or self.weight_function or self.bias_function):
            return super().forward(*args, **kwargs)
        device = next(a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)).device
        bias_dtype = None if self.bias is None else self.bias.dtype
        weight, bias, stream = comfy.ops.cast_bias_weight(
            self, device=device, dtype=self.weight.dtype, bias_dtype=bias_dtype, offloadable=True)
        try:
            with _substituted(self, weight=weight, bias=bias):
                return super().forward(*args, **kwargs)
        finally:
            comfy.ops.uncast_bias_weight(self, weight, bias, stream)


@contextlib.contextmanager
def _substituted(module: nn.Module, **tensors):
    """Temporarily replace registered parameters by plain tensors (as torch.func.functional_call
    does), so the module's unmodified forward computes with them."""
    names = [n for n in tensors if n in module._parameters]
    saved = {n: module._parameters[n] for n in names}
    try:
        for n in names:
            module._parameters[n] = tensors[n]
        yield
    finally:
        module._parameters.update(saved)


_CAST_CLASSES: dict[type, type] = {}


def _cast_class(base: type) -> type:
    if base not in _CAST_CLASSES:
        _CAST_CLASSES[base] = type(f"Offloadable{base.__name__}", (_CastLayer, base), {"__module__": __name__})
    return _CAST_CLASSES[base]


def _bias_on(layer: nn.Module, device: torch.device, non_blocking: bool) -> torch.Tensor | None:
    if layer.bias is None:
        return None
    bias = layer.bias.to(device, non_blocking=non_blocking, copy=bool(layer.bias_function))  # patches add in place
    for function in layer.bias_function:
        bias = function(bias)
    return bias


class OffloadableFP8Linear(quant.FP8Linear, CastWeightBiasOp):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        comfy.ops.run_every_op()
        non_blocking = comfy.model_management.device_supports_non_blocking(x.device)
        weight = self.weight.to(x.device, non_blocking=non_blocking)
        scale = self.weight_scale.to(x.device, non_blocking=non_blocking)
        return self.forward_with(x, weight, scale, _bias_on(self, x.device, non_blocking), self.weight_function)


def _nf4_forward(self, x: torch.Tensor) -> torch.Tensor:
    # Never bitsandbytes' own forward: on AVX512-BF16 CPUs it repacks the stored weight in place
    # with bf16 block scales, which would change the numbers and could no longer be streamed.
    comfy.ops.run_every_op()
    non_blocking = comfy.model_management.device_supports_non_blocking(x.device)
    return quant.nf4_linear(x, self.weight, _bias_on(self, x.device, non_blocking), self.weight_function, non_blocking)


_NF4_CLASS: list[type] = []


def _nf4_class() -> type:
    """The offloadable bitsandbytes Linear4bit (bitsandbytes imported only when NF4 is used)."""
    if not _NF4_CLASS:
        import bitsandbytes as bnb

        _NF4_CLASS.append(type("OffloadableNF4Linear", (bnb.nn.Linear4bit, CastWeightBiasOp),
                               {"forward": _nf4_forward, "__module__": __name__}))
    return _NF4_CLASS[0]
