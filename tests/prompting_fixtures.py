"""A tiny random Qwen3-VL with a vision tower and an LM head, written in every published
text-encoder layout, for the magic prompt and describe tests.

The model is transformers' own `Qwen3VLForConditionalGeneration`: the text part is the 36-layer
hidden-32 model of text_encoder_fixtures (so the 13 taps and the loader's checks hold), the vision
tower has Qwen3-VL-8B's block count, heads and deepstack layers (27, 16, [8, 16, 24]: a single
file carries no config, and the loader knows the 8B's) at hidden size 64.

Layouts (what users have, spec §F):
- `write_hf_folder_with_head`: transformers' save_pretrained (Qwen/Qwen3-VL-8B-Instruct's layout):
  config.json, "model.language_model.*", "model.visual.*", "lm_head.weight";
- `write_comfy_file`: Comfy-Org's single file: the same keys, bf16 or e4m3 + per-tensor
  weight_scale + comfy_quant on every Linear of the language model, the vision tower and the head;
- `write_official_folder`: Qwen3VLModel's save_pretrained (the official / diffusers text_encoder/):
  "language_model.*", "visual.*", no LM head;
- `write_text_only_file`: "model.language_model.*" only;
- `write_lm_head_folder`: diffusers' own `Ideogram4PromptEnhancerHead.save_pretrained`, the layout of
  `diffusers/qwen3-vl-8b-instruct-lm-head`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

from text_encoder_fixtures import TINY_TEXT_CONFIG

TINY_VISION_CONFIG_8B_SHAPED = dict(
    depth=27, hidden_size=64, intermediate_size=128, num_heads=16, out_hidden_size=TINY_TEXT_CONFIG["hidden_size"],
    patch_size=16, temporal_patch_size=2, spatial_merge_size=2, num_position_embeddings=16,
    deepstack_visual_indexes=[8, 16, 24], hidden_act="gelu_pytorch_tanh", in_channels=3,
)


def tiny_generative_qwen3vl(seed: int = 0) -> Qwen3VLForConditionalGeneration:
    """Random tiny Qwen3-VL with vision tower and LM head, float32. Weights are drawn larger than the
    default init so that logits vary strongly between tokens (random-weight sampling then visits
    many grammar paths, and a wrong position or image shows in the parity tests)."""
    torch.manual_seed(seed)
    config = Qwen3VLConfig(text_config=TINY_TEXT_CONFIG, vision_config=TINY_VISION_CONFIG_8B_SHAPED,
                           tie_word_embeddings=False)
    model = Qwen3VLForConditionalGeneration(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                param.copy_(1.0 + 0.2 * torch.randn_like(param))
            elif "embed_tokens" in name or "lm_head" in name:
                param.normal_(0.0, 1.0)
            else:
                param.normal_(0.0, 0.15)
    return model.eval()


def write_hf_folder_with_head(model: Qwen3VLForConditionalGeneration, folder: Path) -> Path:
    model.save_pretrained(folder)
    return folder


def write_official_folder(model: Qwen3VLForConditionalGeneration, folder: Path) -> Path:
    model.model.save_pretrained(folder)
    return folder


def _linear_weight_keys(state: dict[str, torch.Tensor]) -> set[str]:
    return {k for k, v in state.items() if k.endswith(".weight") and v.dim() == 2
            and "embed" not in k and "norm" not in k and "pos_embed" not in k}


def write_comfy_file(model: Qwen3VLForConditionalGeneration, path: Path, fmt: str = "bf16") -> dict[str, torch.Tensor]:
    """Comfy-Org single file; fmt "bf16" or "fp8" (e4m3 + per-tensor weight_scale + comfy_quant,
    stored as uint8 as ComfyUI writes it). Returns every tensor as the file represents it, float32,
    under the model's own state-dict names (to build the reference from)."""
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    tensors, effective = {}, {}
    linear = _linear_weight_keys(state)
    for key, value in state.items():
        if fmt == "fp8" and key in linear:
            scale = value.abs().max().to(torch.float32) / 448.0
            fp8 = (value / scale).to(torch.float8_e4m3fn)
            base = key[: -len(".weight")]
            tensors[key] = fp8.view(torch.uint8)
            tensors[base + ".weight_scale"] = scale.reshape(())
            tensors[base + ".comfy_quant"] = torch.tensor(list(b'{"format": "float8_e4m3fn"}'), dtype=torch.uint8)
            effective[key] = fp8.to(torch.float32) * scale
        elif fmt in ("bf16", "fp8"):
            tensors[key] = value.to(torch.bfloat16)
            effective[key] = tensors[key].to(torch.float32)
        else:
            raise ValueError(fmt)
    save_file(tensors, str(path))
    return effective


def write_text_only_file(model: Qwen3VLForConditionalGeneration, path: Path) -> Path:
    state = model.state_dict()
    save_file({k: v.contiguous() for k, v in state.items() if k.startswith("model.language_model.")}, str(path))
    return path


def write_lm_head_folder(model: Qwen3VLForConditionalGeneration, folder: Path) -> Path:
    """diffusers' Ideogram4PromptEnhancerHead, saved by diffusers (config.json +
    diffusion_pytorch_model.safetensors holding "lm_head.weight")."""
    from diffusers.pipelines.ideogram4.prompt_enhancer import Ideogram4PromptEnhancerHead

    config = model.config.text_config
    head = Ideogram4PromptEnhancerHead(hidden_size=config.hidden_size, vocab_size=config.vocab_size)
    head.lm_head.load_state_dict(model.lm_head.state_dict())
    head.save_pretrained(folder)
    return folder


def with_weights(model: Qwen3VLForConditionalGeneration, weights: dict[str, torch.Tensor]):
    """A copy of `model` whose tensors are replaced (e.g. by what a quantised file represents)."""
    copy = Qwen3VLForConditionalGeneration(model.config)
    copy.load_state_dict({**model.state_dict(), **weights})
    return copy.eval()
