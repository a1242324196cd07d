"""bitsandbytes 0.50.2's two NF4 CPU paths, "plain" and "packed" (ideogram4_core/model/quant.py says
what they are; bnb_cpu_paths.py how a test forces one, and why "packed" needs a CPU with AVX512-BF16).

On every machine:
- our rule for which layers may repack agrees with bitsandbytes' own repack (plain torch), and every
  Linear of the released DiT and of Qwen3-VL-8B passes it (the repack run on meta tensors);
- forced down either path, NF4 files and quantise-on-load never crash, whatever the layer shapes:
  a layer that cannot repack stays on the plain path.

Tolerances (relative L2 over the image rows, tiny 2-layer DiT, measured on seeds 0-2):
- plain path, bf16 compute: bitwise equal to a bf16 model holding the file's dequantised weights
  (bitsandbytes dequantises to the compute dtype and calls F.linear, as that model does);
- packed path, bf16 compute: 0.0051-0.0074 from that model, because its kernel rounds the NF4 code
  table and the block scales to bf16 as well (quant.py); asserted <= PACKED_TOL = 0.015. For scale,
  bf16 compute itself moves the output 0.045-0.058 from fp32;
- float32 compute never repacks, so both paths give bitwise equal outputs;
- text encoder (36 layers at hidden 64), bf16 against diffusers in fp32 on the same dequantised
  weights: relative 0.035-0.039 on either path, diffusers' own bf16 run 0.035-0.036 (seeds 0-1);
  asserted within BF16_TE_RATIO = 1.5x diffusers' own bf16 error.
"""

from __future__ import annotations

import copy

import bitsandbytes as bnb
import pytest
import torch
from transformers import AutoTokenizer

from _checkpoint_factory import TINY, TINY_ALIGNED, dequantized_reference, forward, nf4_state, plain_state, reference_model, rel_error, save
from bnb_cpu_paths import took_packed_path
from ideogram4_core.files.checkpoint import load_transformer
from ideogram4_core.model.quant import dequantize_nf4, nf4_linear_from_float, packed_cpu_path_fits
from ideogram4_core.model.transformer import Ideogram4Config, Ideogram4Transformer
from ideogram4_core.text.encoder import load_text_encoder
from text_encoder_fixtures import (
    ALIGNED_TEXT_CONFIG,
    reference_features,
    reference_tokenizer_folder,
    tiny_qwen3vl,
    with_language_model_weights,
    write_nf4_folder,
)

PACKED_TOL = 0.015
BF16_TE_RATIO = 1.5
# Qwen3-VL-8B's decoder Linears (out, in) (spec §F.5).
QWEN3VL_8B_LINEARS = [(4096, 4096), (1024, 4096), (1024, 4096), (4096, 4096), (12288, 4096), (12288, 4096), (4096, 12288)]
CAPTIONS = ["a red fox in the snow, text 'OPEN 24/7' on a sign", "\n海报：“欢迎” 😀"]


def nf4_layers(model: torch.nn.Module) -> list:
    return [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]


def bnb_repack(weight, state) -> bool:
    """Run bitsandbytes' own repack on a copy; False where it refuses the layer."""
    try:
        bnb.functional._convert_weight_packed_for_cpu(weight.clone(), copy.deepcopy(state))
    except (RuntimeError, AssertionError):
        return False
    return True


@pytest.mark.parametrize("out_features", [16, 48, 64, 96])
@pytest.mark.parametrize("in_features", [32, 96, 128, 208, 256])
def test_fit_rule_agrees_with_the_bitsandbytes_repack(out_features, in_features):
    weight = torch.randn(out_features, in_features, dtype=torch.bfloat16)
    packed, state = bnb.functional.quantize_4bit(weight, blocksize=64, quant_type="nf4")
    fits = packed_cpu_path_fits(out_features, in_features, 64, torch.bfloat16)
    assert bnb_repack(packed, state) == fits
    assert not packed_cpu_path_fits(out_features, in_features, 64, torch.float32)  # fp32 stays exact


def test_every_released_layer_can_take_the_packed_path():
    with torch.device("meta"):
        dit = Ideogram4Transformer(Ideogram4Config())
    shapes = [(m.out_features, m.in_features) for m in dit.modules() if isinstance(m, torch.nn.Linear)]
    assert len(shapes) == 34 * 6 + 7
    for out_features, in_features in set(shapes) | set(QWEN3VL_8B_LINEARS):
        assert packed_cpu_path_fits(out_features, in_features, 64, torch.bfloat16)
        weight = torch.empty(out_features * in_features // 2, 1, dtype=torch.uint8, device="meta")
        state = bnb.functional.QuantState(
            absmax=torch.empty(out_features * in_features // 64, device="meta"), shape=torch.Size((out_features, in_features)),
            code=bnb.functional.get_4bit_type("nf4", device="cpu"), blocksize=64, quant_type="nf4", dtype=torch.bfloat16,
        )
        assert bnb_repack(weight, state), (out_features, in_features)


@pytest.mark.parametrize("nested", [False, True])
def test_aligned_nf4_file_in_bf16(tmp_path, bnb_cpu_path, nested):
    """Shapes like the released model's: every layer takes the forced path."""
    path = save(tmp_path / "dit.safetensors", nf4_state(reference_model(config=TINY_ALIGNED), nested=nested))
    loaded = load_transformer(path, compute_dtype=torch.bfloat16)
    out = forward(loaded)
    layers = nf4_layers(loaded)
    assert len(layers) == 19 and all(took_packed_path(m) == (bnb_cpu_path == "packed") for m in layers)
    oracle = forward(dequantized_reference(path, config=TINY_ALIGNED).to(torch.bfloat16).set_compute_dtype(torch.bfloat16))
    if bnb_cpu_path == "plain":
        assert torch.equal(out, oracle)
    else:
        assert rel_error(out, oracle) <= PACKED_TOL


def test_layers_the_packed_path_cannot_take_fall_back(tmp_path, bnb_cpu_path):
    """TINY has 16-, 32- and 208-wide layers and a 16-row output layer: from a file and quantised on
    load, in bf16, they run on the plain path and the rest on the forced one; nothing crashes."""
    model = reference_model(config=TINY)
    nf4_file = save(tmp_path / "nf4.safetensors", nf4_state(model))
    plain_file = save(tmp_path / "plain.safetensors", plain_state(model, torch.float32))
    for loaded in (load_transformer(nf4_file), load_transformer(plain_file, quantization="nf4")):
        assert torch.isfinite(forward(loaded)).all()
        for m in nf4_layers(loaded):
            fits = packed_cpu_path_fits(m.out_features, m.in_features, 64, torch.bfloat16)
            assert took_packed_path(m) == (bnb_cpu_path == "packed" and fits), (m.out_features, m.in_features)
        assert any(not packed_cpu_path_fits(m.out_features, m.in_features, 64, torch.bfloat16) for m in nf4_layers(loaded))


def test_a_layer_that_cannot_repack_gives_the_plain_result(monkeypatch):
    import bnb_cpu_paths

    torch.manual_seed(0)
    weight, bias, x = torch.randn(48, 96), torch.randn(48), torch.randn(5, 96, dtype=torch.bfloat16)
    outputs = []
    for path in bnb_cpu_paths.PATHS if bnb_cpu_paths.cpu_has_packed_kernel() else ("plain",):
        bnb_cpu_paths.force(monkeypatch, path)
        layer = nf4_linear_from_float(weight, bias, torch.bfloat16, "cpu").eval()  # bnb repacks in eval only
        with torch.no_grad():
            outputs.append(layer(x))
        assert not took_packed_path(layer)
        assert not bnb_repack(layer.weight.data, layer.weight.quant_state)  # bitsandbytes would raise
    assert all(torch.equal(o, outputs[0]) for o in outputs)


def test_float32_compute_never_repacks(tmp_path, monkeypatch):
    """float32 asks for precision: both paths give the same bits (the packed kernel computes in bf16)."""
    import bnb_cpu_paths

    if not bnb_cpu_paths.cpu_has_packed_kernel():
        pytest.skip(bnb_cpu_paths.NO_PACKED_KERNEL)
    path = save(tmp_path / "dit.safetensors", nf4_state(reference_model(config=TINY_ALIGNED)))
    outputs = []
    for forced in bnb_cpu_paths.PATHS:
        bnb_cpu_paths.force(monkeypatch, forced)
        loaded = load_transformer(path, compute_dtype=torch.float32)
        outputs.append(forward(loaded))
        assert not any(took_packed_path(m) for m in nf4_layers(loaded))
    assert torch.equal(outputs[0], outputs[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_what_each_path_computes(bnb_cpu_path, dtype):
    """The numerics quant.py states, on one layer shaped like the real ones: the plain path is
    F.linear on code * absmax in the compute dtype; the packed kernel (bf16 only) is
    bf16(x) @ (bf16(code) * bf16(absmax)), accumulated wider and rounded to bf16 (measured 3e-5
    relative on 4608x4608; a summation-order difference)."""
    torch.manual_seed(0)
    layer = nf4_linear_from_float(torch.randn(256, 512) * 0.05, None, dtype, "cpu").eval()
    state = layer.weight.quant_state
    codes, absmax = state.code[_nibbles(layer.weight.data)].reshape(-1, 64), state.absmax.float()[:, None]
    x = torch.randn(37, 512, dtype=dtype)
    with torch.no_grad():
        y = layer(x).float()
    if took_packed_path(layer):
        assert bnb_cpu_path == "packed" and dtype == torch.bfloat16
        weight = (codes.bfloat16().float() * absmax.bfloat16().float()).reshape(256, 512)
        expected = (x.double() @ weight.double().t()).bfloat16().double()
        assert rel_error(y, expected) < 2e-4
        assert rel_error(y, x.double() @ (codes * absmax).reshape(256, 512).double().t()) > 1e-3  # not exact
    else:
        assert bnb_cpu_path == "plain" or dtype == torch.float32
        expected = torch.nn.functional.linear(x, (codes * absmax).reshape(256, 512).to(dtype)).float()
        assert torch.equal(y, expected)


def test_dequantize_after_a_packed_forward(bnb_cpu_path):
    """dequantize_nf4 gives the weight the layer multiplies by, before and after a repack (then with
    the bf16 block scales the packed kernel uses)."""
    torch.manual_seed(0)
    weight = torch.randn(64, 256)
    layer = nf4_linear_from_float(weight, None, torch.bfloat16, "cpu").eval()
    before = dequantize_nf4(layer).float()
    state = layer.weight.quant_state
    expected = (state.code[_nibbles(layer.weight.data)].reshape(-1, 64) * state.absmax.bfloat16().float()[:, None]).reshape(64, 256)
    with torch.no_grad():
        layer(torch.randn(3, 256, dtype=torch.bfloat16))
    assert took_packed_path(layer) == (bnb_cpu_path == "packed")
    after = dequantize_nf4(layer).float()
    if bnb_cpu_path == "packed":
        assert torch.equal(after, expected.bfloat16().float())
        assert rel_error(after, before) < 0.01  # only the block scales were rounded
    else:
        assert torch.equal(after, before)


def _nibbles(packed: torch.Tensor) -> torch.Tensor:
    """bitsandbytes' 4-bit order: element 2m is the high nibble of byte m."""
    flat = packed.reshape(-1)
    return torch.stack([flat >> 4, flat & 15], dim=1).reshape(-1).long()


@pytest.fixture(scope="module")
def aligned_text_encoder(tmp_path_factory):
    """(NF4 folder, diffusers features in fp32 and bf16) for an aligned tiny Qwen3-VL."""
    tmp = tmp_path_factory.mktemp("aligned_te")
    tokenizer = AutoTokenizer.from_pretrained(reference_tokenizer_folder(tmp / "tokenizer"))
    model = tiny_qwen3vl(0, ALIGNED_TEXT_CONFIG)
    reference = with_language_model_weights(model, write_nf4_folder(model, tmp / "text_encoder"))
    fp32 = reference_features(reference, tokenizer, CAPTIONS)[0]
    bf16 = reference_features(reference.to(torch.bfloat16), tokenizer, CAPTIONS)[0].float()
    return tmp / "text_encoder", fp32, bf16


def test_aligned_nf4_text_encoder(aligned_text_encoder, bnb_cpu_path):
    folder, expected, diffusers_bf16 = aligned_text_encoder
    exact = load_text_encoder(folder, dtype=torch.float32)
    assert (exact.encode(CAPTIONS).features - expected).abs().max() <= 1e-5  # as test_text_encoder_parity
    assert not any(took_packed_path(m) for m in nf4_layers(exact.language_model))
    fast = load_text_encoder(folder, dtype=torch.bfloat16)
    out = fast.encode(CAPTIONS).features
    layers = nf4_layers(fast.language_model)
    assert len(layers) == 36 * 7 and all(took_packed_path(m) == (bnb_cpu_path == "packed") for m in layers)
    assert rel_error(out, expected) <= BF16_TE_RATIO * rel_error(diffusers_bf16, expected)
