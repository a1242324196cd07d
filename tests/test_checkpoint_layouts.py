"""Every published DiT layout (DESIGN §4) is detected from its header and runs a forward pass.

Tolerances (fp32 compute, tiny 2-layer model, relative L2 error over the image rows):
- renames of plain fp32 / bf16 files: bit-exact against the reference model in the same dtype;
- every quantised file against an fp32 model holding the file's own weights dequantised
  independently (bitsandbytes' `dequantize_4bit`, `fp8.float() * scale`), which checks that each
  layer is wired with the right data, scale and layout: FP8 within 1e-6 (measured 0.0); NF4 within
  0.01, because bitsandbytes' CPU 4-bit GEMM rounds the activations to the state's dtype (bf16, as
  the release records it; measured 0.0021), while any wiring error (nibble order, blocksize,
  absmax, a swapped layer) moves the output by tens of percent;
- against the unquantised fp32 reference: FP8 <= 0.07 (e4m3 keeps 3 mantissa bits, so each weight
  moves by up to 2^-4 = 6.25 %, ~3 % RMS; measured 0.039 per-row / 0.045 per-tensor on seed 0,
  0.036-0.046 over seeds 0-2); NF4 <= 0.25 (16 levels per block of 64 weights, ~10 % RMS weight
  error; measured 0.127 on seed 0, 0.127-0.177 over seeds 0-2). Both ~1.5x the worst seen.
- bf16 compute is compared with the reference rounded to and run in bf16 (bf16 alone is 0.048
  away from fp32 on this tiny model), with the same tolerances (measured FP8 0.040, NF4 0.129).
- quantise-on-load keeps the small sensitive layers in full precision, so it lands closer:
  measured FP8 0.012-0.020, NF4 0.047-0.071 over seeds 0-3; asserted at about 2x the worst seen
  (FP8 0.04, NF4 0.14), and the kind of every layer is asserted too.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from _checkpoint_factory import (
    COMFY_PREFIX,
    TINY,
    comfy_fp8_state,
    dequantized_reference,
    forward,
    nf4_state,
    official_fp8_state,
    plain_state,
    reference_model,
    rel_error,
    save,
    write_sharded,
)
from ideogram4_core.files.checkpoint import inspect_checkpoint, load_transformer, load_transformer_pair
from ideogram4_core.files.errors import SameCheckpointWarning
from ideogram4_core.model.quant import ConcatLinear, FP8Linear

FP8_TOL, NF4_TOL, WIRING_TOL, NF4_WIRING_TOL = 0.07, 0.25, 1e-6, 0.01
FP8_ON_LOAD_TOL, NF4_ON_LOAD_TOL = 0.04, 0.14


@pytest.fixture(scope="module")
def ref():
    model = reference_model(seed=0)
    return model, forward(model)


@pytest.mark.parametrize(
    "naming,prefix",
    [("original", ""), ("original", COMFY_PREFIX), ("original", "model."), ("diffusers", "")],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_plain_renames_are_exact(tmp_path, ref, naming, prefix, dtype):
    model, _ = ref
    path = save(tmp_path / "dit.safetensors", plain_state(model, dtype, naming, prefix))
    info = inspect_checkpoint(path)
    assert (info.naming, info.prefix, info.quantization, info.config) == (naming, prefix, "none", TINY)
    loaded = load_transformer(path, compute_dtype=dtype)
    expected = reference_model(seed=0).to(dtype).set_compute_dtype(dtype)
    assert torch.equal(forward(loaded), forward(expected))


def test_official_fp8_per_row(tmp_path, ref):
    model, reference = ref
    path = save(tmp_path / "dit.safetensors", official_fp8_state(model))
    info = inspect_checkpoint(path)
    assert info.quantization == "fp8" and "per-row" in info.quantization_label()
    loaded = load_transformer(path, compute_dtype=torch.float32)
    qkv = loaded.layers[0].attention.qkv
    assert isinstance(qkv, FP8Linear) and qkv.weight.dtype == torch.float8_e4m3fn
    assert qkv.weight_scale.shape == (qkv.out_features, 1)
    out = forward(loaded)
    assert rel_error(out, forward(dequantized_reference(path))) <= WIRING_TOL
    assert rel_error(out, reference) <= FP8_TOL


@pytest.mark.parametrize("variant", ["comfy_quant", "metadata", "legacy", "uint8"])
def test_comfy_fp8_per_tensor(tmp_path, ref, variant):
    model, reference = ref
    state, metadata = comfy_fp8_state(model, variant)
    path = save(tmp_path / "ideogram4_fp8_scaled.safetensors", state, metadata)
    info = inspect_checkpoint(path)
    assert (info.prefix, info.quantization) == (COMFY_PREFIX, "fp8")
    assert "per-tensor" in info.quantization_label()
    loaded = load_transformer(path, compute_dtype=torch.float32)
    assert loaded.layers[1].feed_forward.w2.weight_scale.shape == ()
    out = forward(loaded)
    assert rel_error(out, forward(dequantized_reference(path, prefix=COMFY_PREFIX))) <= WIRING_TOL
    assert rel_error(out, reference) <= FP8_TOL


def test_comfy_fp8_unit_scales_is_a_plain_cast(tmp_path, ref):
    """The published Comfy-Org file reportedly has every scale = 1.0 (spec §F.3)."""
    model, reference = ref
    state, _ = comfy_fp8_state(model, "comfy_quant", unit_scale=True)
    path = save(tmp_path / "dit.safetensors", state)
    out = forward(load_transformer(path, compute_dtype=torch.float32))
    assert rel_error(out, forward(dequantized_reference(path, prefix=COMFY_PREFIX))) <= WIRING_TOL
    # Tiny init weights are ~0.06 in magnitude: e4m3 subnormals start at 2^-6, so a unit-scale cast
    # loses more here than on the real model's weights; only wiring is asserted for this variant.


@pytest.mark.parametrize("nested", [False, True])
def test_official_nf4(tmp_path, ref, nested):
    model, reference = ref
    path = save(tmp_path / "dit.safetensors", nf4_state(model, nested=nested))
    info = inspect_checkpoint(path)
    part = info.linears["layers.0.attention.qkv"][0]
    assert (part.kind, part.nf4_blocksize, part.nf4_nested) == ("nf4", 64, nested)
    loaded = load_transformer(path, compute_dtype=torch.float32)
    assert type(loaded.layers[0].feed_forward.w1).__name__ == "Linear4bit"
    assert loaded.layers[0].feed_forward.w1.weight.quant_state.blocksize == 64
    out = forward(loaded)
    assert rel_error(out, forward(dequantized_reference(path))) <= NF4_WIRING_TOL
    assert rel_error(out, reference) <= NF4_TOL


def test_diffusers_nf4_keeps_separate_qkv_layers(tmp_path, ref):
    """A diffusers-layout NF4 folder (bnb quantisation config): to_q/to_k/to_v are quantised
    separately, so they run as three 4-bit layers whose outputs are concatenated."""
    model, reference = ref
    path = save(tmp_path / "transformer" / "diffusion_pytorch_model.safetensors", nf4_state(model, naming="diffusers"))
    save(tmp_path / "unconditional_transformer" / "diffusion_pytorch_model.safetensors", nf4_state(model, naming="diffusers"))
    info = inspect_checkpoint(tmp_path)
    assert (info.layout, info.component, info.naming, info.quantization) == ("diffusers_folder", "transformer", "diffusers", "nf4")
    loaded = load_transformer(tmp_path, compute_dtype=torch.float32)
    assert isinstance(loaded.layers[0].attention.qkv, ConcatLinear)
    out = forward(loaded)
    assert rel_error(out, forward(dequantized_reference(path))) <= NF4_WIRING_TOL
    assert rel_error(out, reference) <= NF4_TOL


def test_diffusers_fp8_merges_qkv_scales_per_row(tmp_path, ref):
    model, reference = ref
    state, _ = comfy_fp8_state(model, "comfy_quant", prefix="")
    from ideogram4_core.model.keys import original_to_diffusers

    # Per-tensor scales of the fused qkv, split as a converter would: each part keeps the scale.
    split = {}
    for k, v in state.items():
        if k.endswith("attention.qkv.weight_scale") or k.endswith("attention.qkv.comfy_quant"):
            for p in "qkv":
                split[k.replace("qkv.", f"to_{p}.")] = v.clone()
        else:
            split.update(original_to_diffusers({k: v}))
    path = save(tmp_path / "dit.safetensors", split)
    loaded = load_transformer(path, compute_dtype=torch.float32)
    assert loaded.layers[0].attention.qkv.weight_scale.shape == (3 * TINY.hidden_size, 1)
    assert rel_error(forward(loaded), forward(dequantized_reference(path))) <= WIRING_TOL


def test_sharded_official_folder_and_pair(tmp_path, ref):
    model, reference = ref
    uncond = reference_model(seed=7)
    write_sharded(tmp_path / "transformer", official_fp8_state(model))
    write_sharded(tmp_path / "unconditional_transformer", official_fp8_state(uncond), shards=2)
    info = inspect_checkpoint(tmp_path)
    assert (info.layout, info.sharded, len(info.files), info.naming) == ("official_folder", True, 3, "original")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # two different files: no warning
        cond_model, uncond_model = load_transformer_pair(tmp_path, compute_dtype=torch.float32)
    assert rel_error(forward(cond_model), reference) <= FP8_TOL
    assert rel_error(forward(uncond_model), forward(uncond)) <= FP8_TOL


def test_index_file_path_is_accepted(tmp_path, ref):
    index = write_sharded(tmp_path, plain_state(ref[0]), shards=2)
    assert torch.equal(forward(load_transformer(index, compute_dtype=torch.float32)), ref[1])


def test_cond_file_as_uncond_is_fine_but_same_file_twice_warns(tmp_path, ref):
    cond = save(tmp_path / "cond.safetensors", plain_state(ref[0], torch.bfloat16))
    other = save(tmp_path / "other.safetensors", plain_state(reference_model(seed=3), torch.bfloat16))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_transformer_pair(other, cond)  # the conditional file in the unconditional role: fine
    with pytest.warns(SameCheckpointWarning, match="same weights"):
        load_transformer_pair(cond, cond)
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(cond.read_bytes())
    with pytest.warns(SameCheckpointWarning):
        load_transformer_pair(cond, copy)


# Quantise-on-load quantises the per-block linears and llm_cond_proj (99.5 % of the weights of
# the released model) and keeps these small, sensitive ones in the compute dtype.
KEPT_ON_LOAD = ("input_proj", "t_embedding.mlp_in", "t_embedding.mlp_out", "adaln_proj",
                "final_layer.adaln_modulation", "final_layer.linear")


@pytest.mark.parametrize("target,tol", [("fp8", FP8_ON_LOAD_TOL), ("nf4", NF4_ON_LOAD_TOL)])
def test_quantise_on_load(tmp_path, ref, target, tol):
    model, reference = ref
    path = save(tmp_path / "dit.safetensors", plain_state(model, torch.float32))
    loaded = load_transformer(path, quantization=target, compute_dtype=torch.float32)
    kinds = {name: type(m).__name__ for name, m in loaded.named_modules()
             if isinstance(m, (torch.nn.Linear, FP8Linear)) or type(m).__name__ == "Linear4bit"}
    quantised = {"fp8": "FP8Linear", "nf4": "Linear4bit"}[target]
    expected = {name: "Linear" if name in KEPT_ON_LOAD else quantised for name in kinds}
    assert set(KEPT_ON_LOAD) <= set(kinds) and "llm_cond_proj" in kinds and "layers.1.adaln_modulation" in kinds
    assert kinds == expected
    assert all(type(loaded.get_submodule(n)) is torch.nn.Linear and loaded.get_submodule(n).weight.dtype == torch.float32
               for n in KEPT_ON_LOAD)  # kept in the compute dtype
    error = rel_error(forward(loaded), reference)
    print(f"quantise-on-load {target}: relative error {error:.4f}")
    assert error <= tol


def test_bf16_compute_on_quantised_files(tmp_path, ref):
    """The default compute dtype, against the reference rounded to and run in bf16."""
    model, _ = ref
    reference = forward(reference_model(seed=0).to(torch.bfloat16).set_compute_dtype(torch.bfloat16))
    fp8 = save(tmp_path / "fp8.safetensors", official_fp8_state(model))
    nf4 = save(tmp_path / "nf4.safetensors", nf4_state(model))
    assert rel_error(forward(load_transformer(fp8)), reference) <= FP8_TOL
    assert rel_error(forward(load_transformer(nf4)), reference) <= NF4_TOL


def test_summary_is_readable(tmp_path, ref):
    state, _ = comfy_fp8_state(ref[0], "legacy")
    text = inspect_checkpoint(save(tmp_path / "x.safetensors", state)).summary()
    assert "prefix 'model.diffusion_model.'" in text
    assert "FP8 float8_e4m3fn, per-tensor scales (legacy scaled_fp8)" in text
    assert "2 layers, hidden 256 (2 heads x 128)" in text
