"""Our MODEL's state-dict keys are `diffusion_model.<original Ideogram key>`, the names ComfyUI's
LoRA key map and weight patches use (issue 12), with no weight held twice; native
LoraLoaderModelOnly patches every weight kind (FP8 / NF4 ones per call: nodes/patcher.py).
Checked inside the real ComfyUI library (one subprocess for the module)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from comfy_inprocess import INPROCESS, run_in_comfy
from ideogram4_core.model.keys import diffusers_to_original
from oracle_models import TINY, diffusers_transformer

QUANTIZATIONS = ["as_stored", "fp8", "nf4"]
PATCHED = ["layers.0.attention.qkv", "layers.1.feed_forward.w2"]


def ai_toolkit_lora(rank: int = 2) -> dict:
    gen = torch.Generator().manual_seed(5)
    hidden, ffn = TINY.hidden_size, TINY.intermediate_size
    shapes = dict(zip(PATCHED, [(3 * hidden, hidden), (hidden, ffn)]))
    out = {}
    for module, (n_out, n_in) in shapes.items():
        out[f"diffusion_model.{module}.lora_A.weight"] = torch.randn(rank, n_in, generator=gen)
        out[f"diffusion_model.{module}.lora_B.weight"] = torch.randn(n_out, rank, generator=gen)
    return out


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    state = diffusers_to_original(diffusers_transformer(seed=3).state_dict())
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "tiny.safetensors"))
    save_file(ai_toolkit_lora(), str(folder / "lora.safetensors"))
    return run_in_comfy(INPROCESS / "model_keys.py", {"model": str(folder / "tiny.safetensors"),
                                                       "lora": str(folder / "lora.safetensors"),
                                                       "quantizations": QUANTIZATIONS})


@pytest.mark.parametrize("quantization", QUANTIZATIONS)
def test_model_keys_are_diffusion_model_plus_original_names(cases, quantization):
    case = cases[quantization]
    ours = [k for k in case["model_keys"] if k.startswith("diffusion_model.")]
    assert ours == sorted("diffusion_model." + k for k in case["dit_keys"])
    assert "diffusion_model.layers.0.attention.qkv.weight" in ours
    assert not any(".dit." in k for k in case["model_keys"])


@pytest.mark.parametrize("quantization", QUANTIZATIONS)
def test_no_weight_is_duplicated(cases, quantization):
    case = cases[quantization]
    assert case["same_storage"] and case["unwrap_is_dit"]
    assert case["parameter_count"] == case["dit_parameter_count"]
    assert case["patcher_size"] == case["dit_bytes"]


def test_comfy_lora_key_map_reaches_every_linear(cases):
    """ai-toolkit (`diffusion_model.<module>`) and kohya (`lora_unet_<module with _>`) names map onto
    our weights, so native LoraLoaderModelOnly finds them."""
    case = cases["as_stored"]
    linears = [k[: -len(".weight")] for k in case["dit_keys"]
               if k.endswith(".weight") and ("attention.qkv" in k or "attention.o." in k or "feed_forward" in k)]
    assert len(linears) == 5 * TINY.num_layers
    for module in linears:
        target = f"diffusion_model.{module}.weight"
        assert case["key_map"][f"diffusion_model.{module}"] == target
        assert case["key_map"]["lora_unet_" + module.replace(".", "_")] == target


@pytest.mark.parametrize("quantization", QUANTIZATIONS)
def test_native_lora_loader_patches_every_weight_kind(cases, quantization):
    """Float weights are merged by ComfyUI as usual; FP8 / NF4 ones are patched too, and the patch
    is applied to the dequantised weight on every call, never merged into the quantised storage
    (nodes/patcher.py; the numbers are checked in tests/test_lowvram.py)."""
    case = cases[quantization]
    assert "native_error" not in case
    assert case["native_patched_keys"] == [f"diffusion_model.{m}.weight" for m in PATCHED]
