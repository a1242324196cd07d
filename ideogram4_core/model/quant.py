"""Quantised Linear layers shared by the loaders: weight-only FP8 and bitsandbytes NF4.

FP8 keeps float8 weights in memory and dequantises one layer at a time when it runs, so a model
costs about one byte per weight. The product `weight * scale` is formed in float32 and rounded
once to the activation dtype, which is what loading the reference with dequantised bf16 weights
gives.

NF4 uses bitsandbytes `Linear4bit` (blocksize 64, no double quantisation, like the official
release); bitsandbytes 0.50 runs it on CPU as well as CUDA. On CPU it has two paths, and
`keep_cpu_path_valid` decides per layer which one a layer may take (see there).

Layer protocol for hosts that offload weights (ComfyUI's lowvram / partial loading, see
nodes/comfy_ops.py): `FP8Linear.forward_with(x, weight, scale, bias, weight_functions)` and
`nf4_dequantized(weight, dtype, device)` take the stored tensors wherever they live, copy them to
the compute device, dequantise there and apply the host's `weight_functions` (e.g. LoRA patches) to
the dequantised float weight, never to the quantised storage. The stored parameters are left
unchanged, so the same model gives the same numbers whether a layer is resident or streamed.
"""

from __future__ import annotations

import copy
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

FP8_E4M3_MAX = 448.0  # largest finite float8_e4m3fn value
DEQUANT_ROWS = 1024  # rows dequantised per chunk (about 200 MB of float32 at the widest layer)


class FP8Linear(nn.Module):
    """y = x @ (weight * scale)^T + bias, with `weight` stored as float8.

    `weight_scale` is float32 of shape () (per tensor, ComfyUI's format) or (out, 1) (per output row,
    the official Ideogram release).
    """

    def __init__(self, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        if weight.dtype not in (torch.float8_e4m3fn, torch.float8_e5m2):
            raise TypeError(f"FP8Linear needs a float8 weight, got {weight.dtype}")
        self.out_features, self.in_features = weight.shape
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.weight_scale = nn.Parameter(weight_scale.to(torch.float32), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        return dequantize_fp8(self.weight, self.weight_scale, dtype)

    # "auto": a real FP8 matmul where the GPU has FP8 tensor cores (see `scaled_mm_mode`), otherwise
    # dequantise this one layer. Tests force "scaled_mm_rowwise" / "scaled_mm_tensorwise" on CPU
    # (torch._scaled_mm runs there too) or "dequantize". Set per module; not stored in state dicts.
    matmul: str = "auto"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with(x, self.weight, self.weight_scale, self.bias)

    def forward_with(
        self,
        x: torch.Tensor,
        weight: torch.Tensor,
        weight_scale: torch.Tensor,
        bias: torch.Tensor | None,
        weight_functions: Sequence[Callable[[torch.Tensor], torch.Tensor]] = (),
    ) -> torch.Tensor:
        """This layer on the given tensors (this layer's own, or copies of them on x's device).

        weight_functions are applied in order to the dequantised (out, in) weight in x.dtype (a
        host's weight patches such as LoRA); with any of them the FP8 matmul is skipped, since the
        patched weight is no longer FP8. `bias` must already be on x's device."""
        mode = "dequantize" if weight_functions else self.matmul if self.matmul != "auto" else scaled_mm_mode(self, x)
        if mode in ("scaled_mm_rowwise", "scaled_mm_tensorwise"):
            return fp8_scaled_mm(x, weight, weight_scale, bias, rowwise=mode == "scaled_mm_rowwise")
        w = dequantize_fp8(weight, weight_scale, x.dtype)
        for function in weight_functions:
            w = function(w)
        return F.linear(x, w, None if bias is None else bias.to(x.dtype))

    def extra_repr(self) -> str:
        per = "row" if self.weight_scale.ndim else "tensor"
        return f"in={self.in_features}, out={self.out_features}, {self.weight.dtype}, scale per {per}"


def dequantize_fp8(weight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(out, in) float8 `weight` times its float32 `scale` (() or (out, 1)), formed in float32 and
    rounded once to `dtype`, on weight's device.

    A few rows at a time: the float32 product of a whole layer would be a 1 GB temporary for
    llm_cond_proj (4608 x 53248); the values are the same either way."""
    out = torch.empty(weight.shape, dtype=dtype, device=weight.device)
    per_row = scale.ndim > 0
    for start in range(0, weight.shape[0], DEQUANT_ROWS):
        rows = slice(start, start + DEQUANT_ROWS)
        out[rows] = (weight[rows].to(torch.float32) * (scale[rows] if per_row else scale)).to(dtype)
    return out


def scaled_mm_mode(layer: "FP8Linear", x: torch.Tensor) -> str:
    """Which matmul "auto" picks. torch._scaled_mm needs FP8 tensor cores (compute capability 8.9+),
    an e4m3 weight, both weight dims multiples of 16, and a bf16 result (fp32 compute asks for
    precision, so it dequantises). Row-wise scales need sm90+ (Hopper); on sm89 (Ada) the activation
    is quantised per tensor and the weight's row scales are applied to the output instead."""
    if not x.is_cuda or x.dtype != torch.bfloat16 or layer.weight.dtype != torch.float8_e4m3fn:
        return "dequantize"
    if layer.in_features % 16 or layer.out_features % 16:
        return "dequantize"
    major, minor = torch.cuda.get_device_capability(x.device)
    if (major, minor) >= (9, 0):
        return "scaled_mm_rowwise"
    return "scaled_mm_tensorwise" if (major, minor) >= (8, 9) else "dequantize"


def fp8_scaled_mm(
    x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None, rowwise: bool
) -> torch.Tensor:
    """x @ (weight * scale)^T + bias as a real FP8 matmul, quantising x to e4m3 on the fly.

    rowwise: x gets one scale per token (amax/448) and the weight its per-row scales (a per-tensor
    scale is broadcast to rows), both applied inside torch._scaled_mm. Otherwise x gets a single
    per-tensor scale and the weight's row scales multiply the output. Rows are zero-padded to a
    multiple of 16 (cuBLASLt's FP8 alignment). Result in x.dtype.
    """
    out_features, in_features = weight.shape
    lead = x.shape[:-1]
    x2 = x.reshape(-1, in_features)
    rows = x2.shape[0]
    if rows % 16:
        x2 = F.pad(x2, (0, 0, 0, 16 - rows % 16))
    x32 = x2.to(torch.float32)
    amax = x32.abs().amax(dim=1, keepdim=True) if rowwise else x32.abs().amax()
    x_scale = (amax / FP8_E4M3_MAX).clamp(min=1e-12)
    xq = (x32 / x_scale).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn)
    w_scale = weight_scale.to(torch.float32).reshape(-1)
    if rowwise:
        w_scale = w_scale.expand(out_features).reshape(1, out_features).contiguous()
        out = torch._scaled_mm(xq, weight.t(), scale_a=x_scale, scale_b=w_scale, out_dtype=x.dtype)
    elif w_scale.numel() == 1:
        out = torch._scaled_mm(xq, weight.t(), scale_a=x_scale, scale_b=w_scale.reshape(()), out_dtype=x.dtype)
    else:
        one = torch.ones((), dtype=torch.float32, device=x.device)
        out = torch._scaled_mm(xq, weight.t(), scale_a=x_scale, scale_b=one, out_dtype=torch.float32)
        out = (out * w_scale).to(x.dtype)
    out = out[:rows]
    if bias is not None:
        out = out + bias.to(out.dtype)
    return out.reshape(*lead, out_features)


class ConcatLinear(nn.Module):
    """Several linear layers over the same input whose outputs are concatenated: the fused QKV
    projection rebuilt from diffusers' separately quantised to_q / to_k / to_v (NF4 blocks of
    separate tensors cannot be merged without re-quantising; this is exact)."""

    def __init__(self, parts: list[nn.Module]):
        super().__init__()
        self.parts = nn.ModuleList(parts)
        self.in_features = parts[0].in_features
        self.out_features = sum(p.out_features for p in parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([p(x) for p in self.parts], dim=-1)


def quantize_fp8_per_row(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float weight -> (float8_e4m3fn weight, float32 (out, 1) scale) with scale = rowmax|W| / 448,
    the official Ideogram quantiser. All-zero rows get scale 1 so they stay exactly zero."""
    w = weight.to(torch.float32)
    scale = w.abs().amax(dim=1, keepdim=True) / FP8_E4M3_MAX
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return (w / scale).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn), scale


def nf4_linear_from_float(
    weight: torch.Tensor, bias: torch.Tensor | None, compute_dtype: torch.dtype, device: torch.device | str
) -> nn.Module:
    """Quantise a float weight to NF4 on `device` and wrap it in a bitsandbytes Linear4bit."""
    import bitsandbytes as bnb

    out_features, in_features = weight.shape
    layer = _empty_linear4bit(bnb, in_features, out_features, bias is not None, compute_dtype)
    layer.weight = bnb.nn.Params4bit(
        weight.to(compute_dtype), requires_grad=False, quant_type="nf4", compress_statistics=False
    )
    _set_bias(layer, bias, compute_dtype)
    return keep_cpu_path_valid(layer.to(device))  # moving Params4bit to a device is what quantises it


def nf4_linear_from_packed(
    packed: torch.Tensor,
    quant_stats: dict[str, torch.Tensor],
    bias: torch.Tensor | None,
    compute_dtype: torch.dtype,
    device: torch.device | str,
) -> nn.Module:
    """A Linear4bit from bitsandbytes' serialised form (`weight` + `absmax`, `quant_map`,
    `quant_state.bitsandbytes__nf4`, optional `nested_*`), as transformers and the official
    NF4 release store it."""
    import bitsandbytes as bnb

    weight = bnb.nn.Params4bit.from_prequantized(
        data=packed, quantized_stats=quant_stats, requires_grad=False, device=torch.device(device)
    )
    out_features, in_features = weight.quant_state.shape
    layer = _empty_linear4bit(bnb, in_features, out_features, bias is not None, compute_dtype)
    layer.weight = weight
    _set_bias(layer, bias, compute_dtype)
    return keep_cpu_path_valid(layer.to(device))


def dequantize_nf4(layer: nn.Module) -> torch.Tensor:
    """The (out, in) weight a Linear4bit multiplies by, in the state's dtype (for parity checks and
    re-quantisation). Also right after a packed-path CPU forward has repacked the layer: then the
    block scales are the bf16-rounded ones that kernel uses."""
    import bitsandbytes as bnb

    data, state = layer.weight.data, layer.weight.quant_state
    if getattr(state, "packing_format_for_cpu", False):
        data, state = _unpacked_copy(bnb, data, state)
    return _dequantize_flat(bnb, data, state)


def _dequantize_flat(bnb, data: torch.Tensor, state) -> torch.Tensor:
    """bitsandbytes' dequantize_4bit of `data`, right for every shape.

    bitsandbytes 0.50.2's CPU kernel dequantises row by row and gets the block statistics wrong
    when a row is not a whole number of blocks: for in_features 16, 32, 48, 96, 160, 208 (blocksize
    64) a third to a half of the weights come out with another block's scale (tests/
    test_quant_layers.py). Blocks run over the flattened weight, so dequantising it as one flat row
    is right on every device; the released models' layers (multiples of 64) give the same numbers
    either way."""
    flat = copy.copy(state)  # a shallow copy: the layer's own state keeps its shape
    flat.shape = torch.Size([state.shape.numel()])
    return bnb.functional.dequantize_4bit(data, flat).view(state.shape)


# bitsandbytes 0.50.2 runs NF4 on CPU in one of two ways. `Linear4bit.__init__` stores
# `has_avx512bf16()` in `support_avx512bf16_for_cpu`; when that is true, the layer's first CPU
# forward in eval mode without grad repacks its weight (`_convert_weight_packed_for_cpu`) for a fused
# AVX512-BF16 kernel (the "packed" path). Otherwise every forward dequantises the stored layout (the
# "plain" path). The repack interleaves 32 output rows and reshapes the block scales to
# (out, in / blocksize), so it raises for any layer whose in_features is not a multiple of the
# blocksize or whose out_features is not a multiple of 32. Every Linear of the released DiT and of
# Qwen3-VL-8B fits; tiny or unusual files need not, and quantise-on-load sees whatever a file holds.
#
# Numerics (asserted in tests/test_nf4_cpu_paths.py): the plain path is F.linear on code * absmax
# in the compute dtype (float32: 3e-7 relative from an fp64 matmul on a 4608x4608 layer); the
# packed kernel computes bf16(x) @ (bf16(code) * bf16(absmax)) and rounds the output to bf16
# whatever the compute dtype (2.7e-3 relative from exact on that layer; on the tiny DiT in bf16,
# 0.5-0.7 % from the plain path, while bf16 itself is 4.5-5.8 % from float32). So float32
# compute, which asks for precision, stays on the plain path, as FP8Linear dequantises for
# float32; bf16 compute takes the packed path where the shape fits, the way bitsandbytes chose it.
PACKED_CPU_ROWS = 32  # bitsandbytes' block_n for the packed CPU layout


def packed_cpu_path_fits(out_features: int, in_features: int, blocksize: int, compute_dtype: torch.dtype) -> bool:
    """Whether a layer may take bitsandbytes' packed AVX512-BF16 CPU path (see the note above)."""
    shape_fits = in_features % blocksize == 0 and out_features % PACKED_CPU_ROWS == 0
    return shape_fits and compute_dtype == torch.bfloat16


def keep_cpu_path_valid(layer: nn.Module) -> nn.Module:
    """Send a Linear4bit that the packed CPU path cannot (or should not) take down the plain path.
    Switches off bitsandbytes' own per-layer flag; a layer that fits keeps bitsandbytes' choice."""
    state = layer.weight.quant_state
    out_features, in_features = state.shape
    if not packed_cpu_path_fits(out_features, in_features, state.blocksize, layer.compute_dtype):
        layer.support_avx512bf16_for_cpu = False
    return layer


def _unpacked_copy(bnb, data: torch.Tensor, state):
    """(weight, state) in the stored layout from a packed-path layer, leaving the layer untouched.
    bitsandbytes' own inverse leaves un-nested block scales in the packed (in / blocksize, out)
    order, so they are put back in row-major block order here."""
    packed_absmax = state.absmax
    data, state = bnb.functional._convert_weight_packed_for_cpu_inverse(data, copy.deepcopy(state))
    state.absmax = packed_absmax.t().reshape(-1).to(torch.float32)
    state.nested = False
    return data, state


def nf4_dequantized(
    weight: nn.Parameter, dtype: torch.dtype, device: torch.device, non_blocking: bool = False
) -> torch.Tensor:
    """The (out, in) float weight of a bitsandbytes NF4 parameter, dequantised on `device` in `dtype`.

    The packed bytes and block statistics are copied to `device` (no copy where they already are)
    and the stored parameter and its `quant_state` stay where and as they are: bitsandbytes' own
    `Params4bit.to` / `QuantState.to` move the shared state in place, which would drag an offloaded
    layer's statistics onto the compute device."""
    import bitsandbytes as bnb

    data, state = weight.data, weight.quant_state
    if getattr(state, "packing_format_for_cpu", False):  # after a packed-path CPU forward (see below)
        data, state = _unpacked_copy(bnb, data, state)

    def to(t):
        return None if t is None else t.to(device, non_blocking=non_blocking)

    state2 = None
    if state.nested:
        inner = state.state2
        state2 = bnb.functional.QuantState(absmax=to(inner.absmax), code=to(inner.code), blocksize=inner.blocksize,
                                           dtype=inner.dtype)
    on_device = bnb.functional.QuantState(
        absmax=to(state.absmax), shape=state.shape, code=to(state.code), blocksize=state.blocksize,
        quant_type=state.quant_type, dtype=state.dtype, offset=to(state.offset), state2=state2,
    )
    return _dequantize_flat(bnb, to(data), on_device).to(dtype)


def nf4_linear(
    x: torch.Tensor,
    weight: nn.Parameter,
    bias: torch.Tensor | None,
    weight_functions: Sequence[Callable[[torch.Tensor], torch.Tensor]] = (),
    non_blocking: bool = False,
) -> torch.Tensor:
    """x @ W^T + bias with W the NF4 `weight` dequantised on x's device in x.dtype, then passed
    through `weight_functions` in order. On a GPU this is what bitsandbytes' own matmul does for
    more than one row (dequantise, then a dense matmul); `bias` must already be on x's device."""
    w = nf4_dequantized(weight, x.dtype, x.device, non_blocking)
    for function in weight_functions:
        w = function(w)
    return F.linear(x, w, None if bias is None else bias.to(x.dtype))


def is_nf4_layer(module: nn.Module) -> bool:
    """A bitsandbytes Linear4bit or a subclass of it (checked without importing bitsandbytes)."""
    return any(cls.__name__ == "Linear4bit" for cls in type(module).__mro__)


def is_quantized_layer(module: nn.Module) -> bool:
    """FP8Linear or NF4: a layer whose `weight` holds quantised bytes, not the float weight."""
    return isinstance(module, FP8Linear) or is_nf4_layer(module)


def dequantized_bytes(module: nn.Module, dtype: torch.dtype) -> int:
    """Bytes of the float weight a quantised layer materialises on each call (0 for other layers):
    what the compute device needs beyond the stored bytes while the layer runs."""
    if not is_quantized_layer(module):
        return 0
    return module.out_features * module.in_features * torch.empty((), dtype=dtype).element_size()


_LINEAR4BIT: list[type] = []


def _linear4bit_class(bnb) -> type:
    """bitsandbytes' Linear4bit, except that on CPU a layer whose in_features is not a multiple of
    the blocksize (it always takes the plain path, see keep_cpu_path_valid) dequantises with
    `_dequantize_flat` and multiplies densely: bitsandbytes 0.50.2's CPU matmul reads such a layer
    with the same wrong block statistics as its dequantize. Everything else is bitsandbytes' own."""
    if not _LINEAR4BIT:
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            state = self.weight.quant_state
            if x.device.type != "cpu" or state is None or state.shape[-1] % state.blocksize == 0:
                return bnb.nn.Linear4bit.forward(self, x)
            compute = self.compute_dtype or x.dtype
            bias = None if self.bias is None else self.bias.to(compute)
            return nf4_linear(x.to(compute), self.weight, bias).to(x.dtype)

        _LINEAR4BIT.append(type("Linear4bit", (bnb.nn.Linear4bit,), {"forward": forward, "__module__": __name__,
                                                                      "__doc__": _linear4bit_class.__doc__}))
    return _LINEAR4BIT[0]


def _empty_linear4bit(bnb, in_features: int, out_features: int, bias: bool, compute_dtype: torch.dtype):
    with torch.device("meta"):
        return _linear4bit_class(bnb)(
            in_features, out_features, bias=bias, compute_dtype=compute_dtype,
            compress_statistics=False, quant_type="nf4",
        )


def _set_bias(layer: nn.Module, bias: torch.Tensor | None, dtype: torch.dtype) -> None:
    if bias is not None:
        layer.bias = nn.Parameter(bias.to(dtype), requires_grad=False)
