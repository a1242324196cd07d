"""Quantised layers: bitsandbytes NF4 serialisation as the official release stores it, FP8 per-row
and per-tensor, the FP8 matmul path (torch._scaled_mm runs on CPU too, so its numerics are checked
here; on GPUs it is picked automatically on sm89+)."""

from __future__ import annotations

import json

import bitsandbytes as bnb
import pytest
import torch
from safetensors.torch import load_file

from _checkpoint_factory import forward, official_fp8_state, reference_model, rel_error, save
from ideogram4_core.files.checkpoint import load_transformer
from ideogram4_core.model.quant import (
    ConcatLinear,
    FP8Linear,
    nf4_linear_from_packed,
    quantize_fp8_per_row,
    scaled_mm_mode,
)

# Quantising the activations to e4m3 as well (3 mantissa bits, one scale per token or per tensor)
# adds ~2.6 % relative error per layer on top of the weight rounding (measured 0.026).
ACT_FP8_TOL = 0.05


@pytest.mark.parametrize("nested", [False, True])
def test_nf4_serialisation_keys_match_the_release(tmp_path, nested):
    """Spec §F.2: weight (uint8 packed), weight.absmax, weight.quant_map,
    weight.quant_state.bitsandbytes__nf4 (JSON), nested_* only with double quantisation."""
    torch.manual_seed(0)
    ref = torch.nn.Linear(256, 96).to(torch.bfloat16)
    layer = bnb.nn.Linear4bit(256, 96, compute_dtype=torch.bfloat16, compress_statistics=nested, quant_type="nf4")
    layer = layer.to(torch.bfloat16)  # the release quantised bf16 weights: the state records "bfloat16"
    layer.load_state_dict(ref.state_dict())
    state = load_file(str(save(tmp_path / "l.safetensors", layer.to("cpu").state_dict())))
    expected = {"weight", "bias", "weight.absmax", "weight.quant_map", "weight.quant_state.bitsandbytes__nf4"}
    if nested:
        expected |= {"weight.nested_absmax", "weight.nested_quant_map"}
    assert set(state) == expected
    assert state["weight"].dtype == torch.uint8 and state["weight"].shape == (96 * 256 // 2, 1)
    meta = json.loads(bytes(state["weight.quant_state.bitsandbytes__nf4"].tolist()))
    assert (meta["quant_type"], meta["blocksize"], meta["dtype"], meta["shape"]) == ("nf4", 64, "bfloat16", [96, 256])
    assert ("nested_offset" in meta) == nested

    stats = {k[len("weight."):]: v for k, v in state.items() if k.startswith("weight.")}
    loaded = nf4_linear_from_packed(state["weight"], stats, state["bias"], torch.float32, "cpu")
    x = torch.randn(3, 256)
    dequant = bnb.functional.dequantize_4bit(loaded.weight.data, loaded.weight.quant_state).float()
    # bnb's CPU 4-bit GEMM rounds activations to the state's dtype (bf16 here, 8-bit significand):
    # measured 0.2 % relative; any wiring error (nibble order, blocksize, absmax) is far larger.
    assert rel_error(loaded(x), x @ dequant.t() + state["bias"].float()) < 0.01
    # NF4 of uniform-init weights: ~10 % relative RMS weight error.
    assert rel_error(dequant, ref.weight) < 0.15


def test_fp8_per_row_quantiser_matches_the_official_rule():
    w = torch.randn(8, 64)
    w[3] = 0
    w8, scale = quantize_fp8_per_row(w)
    assert w8.dtype == torch.float8_e4m3fn and scale.shape == (8, 1)
    torch.testing.assert_close(scale[0, 0], w[0].abs().max() / 448)
    assert scale[3, 0] == 1 and torch.all(w8[3].float() == 0)  # zero rows stay exactly zero
    assert w8.float().abs().amax() == 448  # the largest weight of each row maps to e4m3's max
    assert rel_error(w8.float() * scale, w) < 0.04


@pytest.mark.parametrize("per", ["row", "tensor"])
@pytest.mark.parametrize("mode", ["scaled_mm_rowwise", "scaled_mm_tensorwise"])
def test_fp8_matmul_matches_dequantised(per, mode):
    torch.manual_seed(0)
    w = torch.randn(96, 208) * 0.05
    if per == "row":
        w8, scale = quantize_fp8_per_row(w)
    else:
        scale = w.abs().amax() / 448
        w8 = (w / scale).to(torch.float8_e4m3fn)
    layer = FP8Linear(w8, scale, torch.randn(96) * 0.1)
    x = torch.randn(2, 7, 208, dtype=torch.bfloat16)  # 14 rows: exercises the padding to 16
    layer.matmul = "dequantize"
    exact = layer(x)
    layer.matmul = mode
    fast = layer(x)
    assert fast.shape == exact.shape and fast.dtype == torch.bfloat16
    assert rel_error(fast, exact) <= ACT_FP8_TOL


def test_auto_mode_dequantises_off_gpu():
    layer = FP8Linear(torch.zeros(32, 32, dtype=torch.float8_e4m3fn), torch.ones(()))
    assert scaled_mm_mode(layer, torch.zeros(1, 32, dtype=torch.bfloat16)) == "dequantize"


def test_whole_model_with_fp8_matmuls(tmp_path):
    """Every layer through torch._scaled_mm with per-token activation scales (the sm90+ path)."""
    model = reference_model()
    path = save(tmp_path / "dit.safetensors", official_fp8_state(model))
    loaded = load_transformer(path)  # bf16 compute
    baseline = forward(loaded)
    for m in loaded.modules():
        if isinstance(m, FP8Linear):
            m.matmul = "scaled_mm_rowwise"
    # Measured 0.038-0.049 against the dequantising path over seeds 0-2; errors of 19 layers
    # partly cancel.
    assert rel_error(forward(loaded), baseline) <= 2 * ACT_FP8_TOL


def test_concat_linear_equals_fused():
    fused = torch.nn.Linear(16, 48, bias=False)
    parts = []
    for chunk in fused.weight.data.chunk(3):
        p = torch.nn.Linear(16, 16, bias=False)
        p.weight.data = chunk.clone()
        parts.append(p)
    x = torch.randn(4, 16)
    concat = ConcatLinear(parts)
    assert (concat.in_features, concat.out_features) == (16, 48)
    assert torch.equal(concat(x), fused(x))


def test_fp8_forward_with_applies_weight_functions_to_the_dequantised_weight():
    """The host protocol (nodes/comfy_ops.py): functions see the float weight, in the activation
    dtype; with any function the FP8 matmul is skipped (the patched weight is no longer FP8)."""
    torch.manual_seed(0)
    layer = FP8Linear(*quantize_fp8_per_row(torch.randn(24, 40)), torch.randn(24))
    layer.matmul = "scaled_mm_rowwise"
    x = torch.randn(3, 40)
    delta = torch.randn(24, 40) * 0.01
    seen = []

    def patch(w):
        seen.append(w.dtype)
        return w + delta

    out = layer.forward_with(x, layer.weight, layer.weight_scale, layer.bias, [patch])
    assert seen == [torch.float32]
    assert torch.equal(out, torch.nn.functional.linear(x, layer.dequantized_weight(torch.float32) + delta, layer.bias))


@pytest.mark.parametrize("nested", [False, True])
def test_nf4_dequantized_leaves_the_stored_layer_alone(nested):
    """Dequantising on a device copies the packed bytes and statistics there; bitsandbytes' own
    QuantState.to would move the stored layer's shared state instead."""
    from ideogram4_core.model.quant import dequantize_nf4, nf4_dequantized, nf4_linear

    torch.manual_seed(0)
    layer = bnb.nn.Linear4bit(128, 64, compute_dtype=torch.float32, compress_statistics=nested, quant_type="nf4")
    layer.load_state_dict(torch.nn.Linear(128, 64).state_dict())
    layer = layer.to("cpu")  # quantises
    state = layer.weight.quant_state
    before = (state.absmax, state.code, layer.weight.data_ptr())
    w = nf4_dequantized(layer.weight, torch.bfloat16, torch.device("cpu"))
    assert w.dtype == torch.bfloat16 and w.shape == (64, 128)
    assert torch.equal(w, dequantize_nf4(layer).to(torch.bfloat16))
    assert state.absmax is before[0] and state.code is before[1] and layer.weight.data_ptr() == before[2]
    x = torch.randn(5, 128)
    expected = torch.nn.functional.linear(x, dequantize_nf4(layer).float(), layer.bias)
    assert torch.equal(nf4_linear(x, layer.weight, layer.bias), expected)


def manual_nf4(layer) -> torch.Tensor:
    """The weight an NF4 layer stands for, decoded here by hand (spec §F.2): flatten row-major,
    element 2m is byte m's high nibble and 2m+1 its low one, w = code[nibble] * absmax[i // 64]."""
    state = layer.weight.quant_state
    packed = layer.weight.data.flatten()
    nibbles = torch.stack([(packed >> 4).long(), (packed & 0xF).long()], 1).flatten()
    n = state.shape.numel()
    absmax = state.absmax.float().repeat_interleave(state.blocksize)[:n]
    return (state.code.float()[nibbles[:n]] * absmax).view(state.shape)


@pytest.mark.parametrize("in_features", [16, 32, 48, 96, 160, 208, 24, 64, 256])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nf4_dequantisation_is_right_for_rows_that_are_not_whole_blocks(in_features, dtype):
    """bitsandbytes 0.50.2's CPU kernel reads the block scales of a row that is not a whole number
    of 64-blocks wrongly (in_features 16, 32, 48, 96, 160, 208: up to half the weights with another
    block's scale); the tiny test models have such layers. Our dequantisation and the layer's
    forward must equal the hand decode for every shape (exactly for the weight; the forward to
    fp32 matmul rounding, or one bf16 rounding of the result)."""
    from ideogram4_core.model.quant import dequantize_nf4, nf4_linear_from_float

    torch.manual_seed(in_features)
    layer = nf4_linear_from_float(torch.randn(64, in_features) * 0.05, torch.randn(64) * 0.1, dtype, "cpu").eval()
    expected_w = manual_nf4(layer)
    assert torch.equal(dequantize_nf4(layer).float(), expected_w.to(dtype).float())
    x = torch.randn(3, in_features)
    with torch.no_grad():
        got = layer(x.to(dtype)).float()
    expected = torch.nn.functional.linear(x.to(dtype).float(), expected_w.to(dtype).float(), layer.bias.float())
    tol = 1e-5 if dtype == torch.float32 else 2 ** -7  # bf16: the packed kernel or one rounding, ~0.4 %
    assert (got - expected).abs().max().item() <= tol * expected.abs().max().item()
    raw = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
    print(f"in {in_features} {dtype}: bitsandbytes' own dequantize off by {(raw - expected_w).abs().max().item():.3f}")
