"""The Ideogram4LoraLoader node inside the real ComfyUI library (tests/inprocess/lora_node.py, one
subprocess for the module) on every weight kind we load: bf16, fp32, FP8 per row and per tensor,
NF4, NF4 with split q/k/v parts; against diffusers 0.42.1 + peft (`load_lora_weights`, then
`set_adapters`) on a transformer holding the same file's dequantised weights.

Tolerances:
- fp32 compute: 2e-6 absolute on O(1) velocities (measured <= 9e-7). The merge (ComfyUI for float
  layers; per call on the dequantised weight for FP8 / NF4) computes x (W + s B A)^T, peft
  x W^T + s (x A^T) B^T: the same sum in another order.
- bf16 compute: bf16 rounding dominates both sides (the oracle's own bf16 run is 0.2 from its fp32
  run on this tiny random model), so ours must be at least as close to the fp32 oracle as diffusers'
  bf16 run is (measured: ours 0.13-0.16, diffusers 0.22-0.28).
Removal: the unpatched MODEL run after its patched clone gives torch.equal outputs and the stored
weights are untouched.
Native LoraLoaderModelOnly (comfy.sd.load_lora_for_models) on the same kohya file gives
bit-identical outputs to the node on every kind it can patch; on split q/k/v parts it refuses with
a message naming the node.
"""

from __future__ import annotations

import pytest

from comfy_inprocess import INPROCESS, run_in_comfy

KINDS = [("fp32", "float32"), ("fp8_per_row", "float32"), ("fp8_per_tensor", "float32"), ("nf4", "float32"),
         ("nf4_split", "float32"), ("bf16", "bfloat16"), ("fp8_per_row", "bfloat16"), ("nf4", "bfloat16")]
LORAS = ["kohya", "onetrainer_half", "chained"]
FP32_TOL = 2e-6


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return run_in_comfy(INPROCESS / "lora_node.py", {}, out_dir=tmp_path_factory.mktemp("lora_node"))


def record(report, **match):
    (found,) = [r for r in report["records"] if all(r.get(k) == v for k, v in match.items())]
    return found


@pytest.mark.parametrize("lora", LORAS)
@pytest.mark.parametrize("kind, dtype", KINDS)
def test_node_equals_diffusers_peft(report, kind, dtype, lora):
    r = record(report, kind=kind, dtype=dtype, lora=lora)
    print(f"{kind} {dtype} {lora}: max {r['max_diff']:.2e} mean {r['mean_diff']:.2e} vs fp32 oracle "
          f"{r['ours_vs_fp32_oracle']:.2e} (oracle bf16 error {r['oracle_bf16_error']:.2e}), effect {r['effect']:.2f}")
    assert r["effect"] > 0.1  # the LoRA matters
    if dtype == "float32":
        assert r["max_diff"] <= FP32_TOL
    else:
        assert r["ours_vs_fp32_oracle"] <= r["oracle_bf16_error"]


@pytest.mark.parametrize("lora", LORAS)
@pytest.mark.parametrize("kind, dtype", KINDS)
def test_removing_the_node_gives_the_bit_identical_output(report, kind, dtype, lora):
    r = record(report, kind=kind, dtype=dtype, lora=lora)
    assert r["removed_bit_identical"] and r["storage_unchanged"]


@pytest.mark.parametrize("kind, dtype", KINDS)
def test_native_lora_loader_equals_the_node_or_names_it(report, kind, dtype):
    r = record(report, kind=kind, dtype=dtype, lora="native_kohya")
    if kind == "nf4_split":
        assert "Ideogram4LoraLoader" in r["native_error"] and "separate NF4 parts" in r["native_error"]
    else:
        assert r["native_patched"] == r["ours_patched"] == 12
        assert r["native_bit_identical"]


def test_unconditional_model_is_patched_only_when_asked(report):
    r = record(report, case="branches")
    assert r["uncond_untouched"] and r["cond_patched"] == 12 and r["uncond_patched_when_asked"] == 12


def test_converted_files_are_cached_until_they_change_on_disk(report):
    r = record(report, case="cache")
    assert r["same_object"] and r["reread_after_change"]


def test_bad_files_give_clear_errors(report):
    errors = report["errors"]
    assert "is not an Ideogram 4 LoRA" in errors["flux.safetensors"]
    assert "double_blocks.0.img_attn.qkv" in errors["flux.safetensors"]
    assert "layers.{0-1}.attention.qkv" in errors["flux.safetensors"]
    assert "pickles" in errors["pickled.pt"] and "pickles" in errors["pickled.pt (validate)"]
    assert "'..'" in errors["../fp32.safetensors (validate)"]
    assert "pickled.pt" not in errors["listed"] and "kohya.safetensors" in errors["listed"]
