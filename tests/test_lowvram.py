"""Issue 15: our models inside ComfyUI's cast / offload machinery, with forced partial loads.

Every weight kind of the DiT (bf16, fp32, FP8 per row and per tensor, NF4, NF4 with split q/k/v
parts) and of the text encoder (plain, FP8, NF4) is placed by ComfyUI's own ModelPatcher with 100 %,
a partial share and 0 % of its weights resident (tests/inprocess/lowvram.py, one subprocess for the
module, on a simulated GPU: see there). Checked: outputs bit-identical to the full load (one code
path per layer, streamed or not), ComfyUI's accounting (loaded bytes = the resident modules'
bytes), stored weights untouched, LoRA patches on quantised layers applied to the dequantised
weight at every residency and never merged, and the sampler node keeping both transformers placed
when they do not fit together.

Runs against whichever ComfyUI the test host uses: CI's 0.3.75, or 0.33 with
`IDEOGRAM4_COMFYUI_DIR=<0.33 tree>` and that tree's Python (docs/comfyui-host.md, section 7).
"""

from __future__ import annotations

import pytest

from comfy_inprocess import INPROCESS, run_in_comfy

CASES = ["dit_partial", "dit_lora", "text_encoder", "sampler_pair"]
DIT_KINDS = ["bf16", "fp32", "fp8_per_row", "fp8_per_tensor", "nf4", "nf4_split"]
FRACTIONS = [1.0, 0.5, 0.0]
# NF4 state dicts carry a JSON copy of each layer's quantisation state (about 100-200 bytes a layer)
# that ComfyUI's per-module count includes and the model's size (weights + block statistics) does not.
NF4_JSON_SLACK = 0.005


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return run_in_comfy(INPROCESS / "lowvram.py", {"cases": CASES}, out_dir=tmp_path_factory.mktemp("lowvram"))


def records(report, name, **match):
    found = [r for r in report[name] if all(r.get(k) == v for k, v in match.items())]
    assert found, (name, match)
    return found


def check_placement(r):
    """ComfyUI's accounting of one placement: what it says is loaded is what is resident."""
    if r["fraction"] == 1.0:
        assert not r["lowvram"] and r["streamed_layers"] == 0
        assert r["loaded"] == r["model_size"]
        slack = NF4_JSON_SLACK if r["kind"].startswith("nf4") else 1e-5  # the TE's rotary buffer: 32 bytes
        assert abs(r["resident_by_module"] - r["loaded"]) <= slack * r["model_size"]
    elif r["fraction"] == 0.0:
        assert r["lowvram"] and r["loaded"] == 0 == r["resident_by_module"]
    else:
        assert r["lowvram"] and 0 < r["loaded"] < r["model_size"] and r["streamed_layers"] > 0
        assert r["loaded"] == r["resident_by_module"]
        assert r["loaded"] + r["offload_buffer"] <= r["budget"]  # room left for the streamed layers


@pytest.mark.parametrize("fraction", FRACTIONS)
@pytest.mark.parametrize("kind", DIT_KINDS)
def test_dit_partial_load_equals_full_load(report, kind, fraction):
    (r,) = records(report, "dit_partial", kind=kind, fraction=fraction)
    assert r["equal_to_full"] and r["finite"]  # torch.equal with the 100 % run
    assert r["storage_unchanged"]
    check_placement(r)


def test_streamed_quantised_layers_reserve_their_dequantised_weight(report):
    """The per-call room ComfyUI keeps for a streamed layer covers the float weight an FP8 / NF4
    layer materialises (fp32 here: 4 bytes a weight, 4x an FP8 layer's bytes), not just its bytes."""
    fp8 = records(report, "dit_partial", kind="fp8_per_row", fraction=0.0)[0]["offload_buffer"]
    fp32 = records(report, "dit_partial", kind="fp32", fraction=0.0)[0]["offload_buffer"]
    assert fp8 > fp32  # largest fp32 layer's bytes < the same layer as FP8 bytes + its fp32 dequantisation


@pytest.mark.parametrize("fraction", FRACTIONS)
@pytest.mark.parametrize("kind", ["fp8_per_row", "nf4", "nf4_split", "fp32"])
def test_lora_on_every_weight_kind_at_every_residency(report, kind, fraction):
    """ComfyUI's own LoRA loading (comfy.lora.load_lora + clone().add_patches) on our layers equals
    an fp32 model whose weights are the file's dequantised weights plus the LoRA product: exactly
    (measured 0.0: dequantise, add the LoRA in fp32, one matmul, as the reference does)."""
    (r,) = records(report, "dit_lora", kind=kind, fraction=fraction)
    assert r["lora_changed_output"]
    assert r["max_error_vs_reference"] <= 1e-6 * r["reference_scale"]
    assert r["equal_to_full"] and r["clone_equal"]
    check_placement(r)


@pytest.mark.parametrize("kind", ["fp8_per_row", "nf4", "nf4_split", "fp32"])
def test_lora_never_touches_the_stored_weights(report, kind):
    (r,) = records(report, "dit_lora", kind=kind, fraction="original after patched clone")
    assert r["storage_unchanged"] and r["equal_to_unpatched"]


@pytest.mark.parametrize("fraction", FRACTIONS)
@pytest.mark.parametrize("kind", ["none", "fp8", "nf4"])
def test_text_encoder_partial_load_equals_full_load(report, kind, fraction):
    (r,) = records(report, "text_encoder", kind=kind, fraction=fraction)
    assert r["equal_to_full"]
    if r["equal_to_core"] is not None:  # the core encoder before ComfyUI wrapped its layers
        assert r["equal_to_core"]
    check_placement(r)


def test_both_transformers_stay_placed_when_they_do_not_fit_together(report):
    ample, tight, compare = (records(report, "sampler_pair", case=c)[0] for c in ("ample", "tight", "compare"))
    assert compare["equal"]  # torch.equal latents
    for run in (ample, tight):
        # One placement for the whole run, nothing unloaded or swapped between the passes.
        assert run["calls"] == {"load_models_gpu": 1, "partially_unload": 0, "detach": 0}
        assert all(run["placed"])
    assert ample["loaded"] == [ample["model_size"]] * 2
    assert tight["weights_room"] < 2 * tight["model_size"]
    assert sum(tight["loaded"]) <= tight["weights_room"]
    assert all(0 < loaded for loaded in tight["loaded"]) and min(tight["loaded"]) < tight["model_size"]
