"""Tiny real Qwen3-VL models, the diffusers reference, and writers for every text-encoder layout.

The model is transformers' own Qwen3VLModel with the real 36 decoder layers (so all 13 taps exist)
but hidden size 32, 4 heads, 2 KV heads, head_dim 8, and the real 151,936-row vocabulary so real
token ids work. The reference features come from diffusers' `Ideogram4Pipeline.encode_prompt`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer, Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLModel

from ideogram4_core.model.quant import quantize_fp8_per_row
from ideogram4_core.text.encoder import text_config_for_transformers
from ideogram4_core.text.tokenizer import BUNDLED_TOKENIZER_DIR

TINY_TEXT_CONFIG = dict(
    vocab_size=151936,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=36,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    rms_norm_eps=1e-6,
    max_position_embeddings=262144,
    # The split is what the loader infers for head_dim 8; with text-only input it does not matter.
    rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [2, 1, 1], "mrope_interleaved": True},
)
TINY_VISION_CONFIG = dict(
    depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32, patch_size=4,
    temporal_patch_size=2, spatial_merge_size=2, num_position_embeddings=16, deepstack_visual_indexes=[0],
)
# Every decoder Linear a multiple of 64 wide and 32 tall, like Qwen3-VL-8B's, so each one can take
# bitsandbytes' packed CPU path (at hidden 32 none can).
ALIGNED_TEXT_CONFIG = dict(
    TINY_TEXT_CONFIG, hidden_size=64, intermediate_size=128, head_dim=16,
    rope_parameters={**TINY_TEXT_CONFIG["rope_parameters"], "mrope_section": [4, 2, 2]},
)
LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# The branch of Qwen3-VL's chat template that a single text-only user turn takes (no tools, no
# system message): "<|im_start|>user\n" + text parts + "<|im_end|>\n", then the generation prompt.
# Spec §C.3 (ComfyUI's hard-coded Ideogram 4 template is the same string).
QWEN3VL_USER_TURN_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message.role + '\\n' }}"
    "{%- if message.content is string %}{{- message.content }}"
    "{%- else %}{%- for part in message.content %}{%- if 'text' in part %}{{- part.text }}{%- endif %}{%- endfor %}"
    "{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def tiny_qwen3vl(seed: int = 0, text_config: dict = TINY_TEXT_CONFIG) -> Qwen3VLModel:
    """Random tiny Qwen3VLModel in float32. Weights are larger than the default init so that every
    layer visibly changes the residual stream (a wrong tap or an applied final norm shows)."""
    torch.manual_seed(seed)
    text_config = text_config_for_transformers(text_config)  # also runs on transformers 4.57
    vision = dict(TINY_VISION_CONFIG, out_hidden_size=text_config["hidden_size"])
    model = Qwen3VLModel(Qwen3VLConfig(text_config=text_config, vision_config=vision))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1.0 + 0.2 * torch.randn_like(param))
            elif "embed_tokens" in name:
                param.normal_(0.0, 1.0)
            else:
                param.normal_(0.0, 0.15)
    return model.eval()


def reference_tokenizer_folder(folder: Path) -> Path:
    """A transformers tokenizer folder made from the bundled vocab/merges with the Qwen3-VL added
    tokens and the user-turn chat template; saved by transformers (so it has a tokenizer.json)."""
    source = folder / "source"
    source.mkdir(parents=True)
    for name in ("vocab.json", "merges.txt"):
        (source / name).write_bytes((BUNDLED_TOKENIZER_DIR / name).read_bytes())
    added = json.loads((BUNDLED_TOKENIZER_DIR / "added_tokens.json").read_text())["added_tokens"]
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "added_tokens_decoder": {
            str(t["id"]): {"content": t["content"], "special": t["special"], "lstrip": False,
                           "rstrip": False, "normalized": False, "single_word": False}
            for t in added
        },
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "bos_token": None,
        "add_prefix_space": False,
        "errors": "replace",
        "split_special_tokens": False,
        "chat_template": QWEN3VL_USER_TURN_TEMPLATE,
    }
    (source / "tokenizer_config.json").write_text(json.dumps(config))
    saved = folder / "tokenizer"
    AutoTokenizer.from_pretrained(source).save_pretrained(saved)
    return saved


def reference_features(model: Qwen3VLModel, tokenizer, captions: list[str]) -> tuple[torch.Tensor, int]:
    """diffusers' encode_prompt text features (B, n, 13*hidden), padded to the longest caption.
    Skips only with transformers 4.x (the floor environment of test_dependency_floors.py), where
    diffusers 0.42.1 cannot be installed."""
    import transformers

    if int(transformers.__version__.split(".")[0]) < 5:
        import pytest

        pytest.skip("the diffusers oracle needs transformers 5; these tests run against it in the main environment")
    from diffusers import Ideogram4Pipeline

    pipe = Ideogram4Pipeline(
        scheduler=None, vae=None, text_encoder=model, tokenizer=tokenizer,
        transformer=None, unconditional_transformer=None,
    )
    lengths = []
    for caption in captions:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": [{"type": "text", "text": caption}]}], add_generation_prompt=True, tokenize=False
        )
        lengths.append(len(tokenizer(text, add_special_tokens=False)["input_ids"]))
    n = max(lengths)
    with torch.no_grad():
        embeds, *_ = pipe.encode_prompt(captions, grid_h=1, grid_w=1, max_sequence_length=n, device=torch.device("cpu"))
    return embeds[:, :n], n


def with_language_model_weights(model: Qwen3VLModel, weights: dict[str, torch.Tensor]) -> Qwen3VLModel:
    """A copy of the tiny model whose language-model tensors are replaced (e.g. by dequantised ones)."""
    copy = Qwen3VLModel(model.config).eval()
    copy.load_state_dict(model.state_dict())
    copy.language_model.load_state_dict({**copy.language_model.state_dict(), **weights})
    return copy


def linear_keys(model: Qwen3VLModel) -> list[str]:
    """Names (under language_model) of every decoder Linear weight."""
    return [k for k in model.language_model.state_dict() if k.endswith(".weight") and k.split(".")[-2] in LINEAR_NAMES]


# ---- layout writers -------------------------------------------------------------------------


def write_hf_folder(model: Qwen3VLModel, folder: Path, *, conditional_generation: bool = False) -> Path:
    """transformers' own save_pretrained output: Qwen3VLModel ("language_model.*") or, with
    conditional_generation, Qwen3VLForConditionalGeneration ("model.language_model.*", lm_head),
    sharded with an index like Qwen/Qwen3-VL-8B-Instruct."""
    if conditional_generation:
        full = Qwen3VLForConditionalGeneration(model.config)
        full.model.load_state_dict(model.state_dict())
        full.save_pretrained(folder, max_shard_size="8MB")
    else:
        model.save_pretrained(folder)
    return folder


def _config_json(model: Qwen3VLModel, **extra) -> str:
    config = model.config.to_dict()
    config.update(extra)
    return json.dumps(config)


def write_official_fp8_folder(model: Qwen3VLModel, folder: Path) -> dict[str, torch.Tensor]:
    """Official Ideogram FP8 text_encoder/: e4m3 `weight` + float32 per-row `weight_scale` (out,),
    `"ideogram_fp8_weight_only": true` in config.json. Returns the dequantised Linear weights."""
    folder.mkdir(parents=True)
    tensors = {f"language_model.{k}": v.contiguous() for k, v in model.language_model.state_dict().items()}
    tensors.update({f"visual.{k}": v.contiguous() for k, v in model.visual.state_dict().items()})
    dequantised = {}
    for key in linear_keys(model):
        fp8, scale = quantize_fp8_per_row(model.language_model.state_dict()[key])
        tensors[f"language_model.{key}"] = fp8
        tensors[f"language_model.{key}_scale"] = scale.reshape(-1)
        dequantised[key] = fp8.to(torch.float32) * scale
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(_config_json(model, ideogram_fp8_weight_only=True))
    return dequantised


def write_comfy_single_file(model: Qwen3VLModel, path: Path, fmt: str) -> dict[str, torch.Tensor]:
    """Comfy-Org style single file with "model.language_model.*", "model.visual.*" and lm_head.

    fmt: "comfy_quant" (e4m3 + per-tensor weight_scale + comfy_quant JSON, weights stored as uint8),
    "legacy" (e4m3 + scale_weight + a `scaled_fp8` marker), or "bf16" (everything bf16).
    Returns the language-model weights as the file holds them, in float32.
    """
    lm = model.language_model.state_dict()
    tensors = {f"model.visual.{k}": v.contiguous() for k, v in model.visual.state_dict().items()}
    tensors["lm_head.weight"] = lm["embed_tokens.weight"].clone()
    effective = {}
    for key, value in lm.items():
        name = f"model.language_model.{key}"
        if fmt == "bf16":
            tensors[name] = value.to(torch.bfloat16)
            effective[key] = tensors[name].to(torch.float32)
        elif key in linear_keys(model):
            scale = value.abs().max().to(torch.float32) / 448.0
            fp8 = (value / scale).to(torch.float8_e4m3fn)
            effective[key] = fp8.to(torch.float32) * scale
            base = name[: -len(".weight")]
            if fmt == "comfy_quant":
                tensors[name] = fp8.view(torch.uint8)
                tensors[base + ".weight_scale"] = scale.reshape(())
                tensors[base + ".comfy_quant"] = torch.tensor(list(b'{"format": "float8_e4m3fn"}'), dtype=torch.uint8)
            else:
                tensors[name] = fp8
                tensors[base + ".scale_weight"] = scale.reshape(1)
        else:
            tensors[name] = value.contiguous()
            effective[key] = value
    if fmt == "legacy":
        tensors["scaled_fp8"] = torch.zeros(2, dtype=torch.float8_e4m3fn)
    if fmt == "bf16":
        tensors = {k: v.to(torch.bfloat16) for k, v in tensors.items()}
    save_file(tensors, str(path))
    return effective


def write_nf4_folder(model: Qwen3VLModel, folder: Path) -> dict[str, torch.Tensor]:
    """A bitsandbytes NF4 folder as transformers saves one: packed `weight` + absmax, quant_map and
    quant_state JSON per Linear, a `quantization_config` in config.json. Returns dequantised weights."""
    from ideogram4_core.model.quant import dequantize_nf4, nf4_linear_from_float

    folder.mkdir(parents=True)
    lm = model.language_model.state_dict()
    tensors = {f"language_model.{k}": v.contiguous() for k, v in lm.items() if k not in linear_keys(model)}
    dequantised = {}
    for key in linear_keys(model):
        layer = nf4_linear_from_float(lm[key], None, torch.float32, "cpu")
        for name, value in layer.state_dict().items():  # weight, weight.absmax, weight.quant_map, ...
            tensors[f"language_model.{key[: -len('.weight')]}.{name}"] = value.contiguous()
        dequantised[key] = dequantize_nf4(layer).to(torch.float32)
    save_file(tensors, str(folder / "model.safetensors"))
    bnb_config = {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                  "bnb_4bit_use_double_quant": False, "bnb_4bit_compute_dtype": "float32"}
    (folder / "config.json").write_text(_config_json(model, quantization_config=bnb_config))
    return dequantised
