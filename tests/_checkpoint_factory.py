"""Tiny Ideogram 4 checkpoints written the way each real release is written (spec §F), and an
independent oracle that reads them back with safetensors + bitsandbytes directly."""

from __future__ import annotations

import json
from pathlib import Path

import bitsandbytes as bnb
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ideogram4_core.model.keys import diffusers_to_original, original_to_diffusers
from ideogram4_core.model.transformer import Ideogram4Config, Ideogram4Transformer
from ideogram4_core.model.packing import conditional_layout, pack_image_tokens, pack_text_features

TINY = Ideogram4Config(
    # head_dim 128 is the smallest that holds the real MRoPE split (3 * 20 frequencies <= 64).
    in_channels=16, num_layers=2, num_heads=2, head_dim=128, intermediate_size=128, adaln_dim=32, llm_features_dim=13 * 16
)
# Every Linear a multiple of 64 wide and 32 tall, like the released model's, so each one can take
# bitsandbytes' packed CPU path (TINY's 16/32/208-wide ones cannot: they cover the fallback).
TINY_ALIGNED = Ideogram4Config(
    in_channels=64, num_layers=2, num_heads=2, head_dim=128, intermediate_size=128, adaln_dim=64, llm_features_dim=13 * 64
)
COMFY_PREFIX = "model.diffusion_model."


def reference_model(seed: int = 0, config: Ideogram4Config = TINY) -> Ideogram4Transformer:
    """fp32 model with random weights; norms and the indicator embedding perturbed away from their
    init so that a wrongly loaded one would show in the output."""
    torch.manual_seed(seed)
    model = Ideogram4Transformer(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.2)
            elif name.endswith(".bias") or "embed_image_indicator" in name:
                p.normal_(0.0, 0.1)
    return model.eval()


def linear_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def forward(model: Ideogram4Transformer, seed: int = 1, text_len: int = 5, grid=(3, 4)) -> torch.Tensor:
    """Conditional pass on random inputs; returns the image rows in fp32."""
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    layout = conditional_layout([text_len], *grid)
    x = pack_image_tokens(torch.randn(1, grid[0] * grid[1], cfg.in_channels, generator=g), layout)
    text = pack_text_features(torch.randn(1, text_len, cfg.llm_features_dim, generator=g), layout)
    with torch.no_grad():
        out = model(x, torch.tensor([0.3]), layout.indicator, layout.position_ids, text, layout.attention_mask)
    return out[:, layout.text_len:].float()


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


# ------------------------------------------------------------------------------------------------
# Writers


def save(path: Path, state: dict, metadata: dict | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=metadata)
    return path


def plain_state(model, dtype=torch.float32, naming="original", prefix="") -> dict:
    state = {k: v.to(dtype) for k, v in model.state_dict().items()}
    if naming == "diffusers":
        state = original_to_diffusers(state)
    return {prefix + k: v for k, v in state.items()}


def official_fp8_state(model) -> dict:
    """ideogram-4-fp8: every Linear weight e4m3 with a float32 per-row scale rowmax|W|/448; the
    rest bf16."""
    linears = set(linear_names(model))
    state = {}
    for k, v in model.state_dict().items():
        module = k.rsplit(".", 1)[0]
        if module in linears and k.endswith(".weight"):
            scale = v.abs().amax(dim=1) / 448.0
            state[k] = (v / scale[:, None]).to(torch.float8_e4m3fn)
            state[f"{module}.weight_scale"] = scale.float()
        else:
            state[k] = v.to(torch.bfloat16)
    return state


def comfy_fp8_state(model, variant: str, unit_scale: bool = False, prefix: str = COMFY_PREFIX):
    """Comfy-Org fp8_scaled: per-tensor e4m3. variant: "comfy_quant" (per-layer JSON tensor),
    "metadata" (header `_quantization_metadata`), "legacy" (`scaled_fp8` marker + `scale_weight`),
    "uint8" (weight stored as uint8 + comfy_quant). unit_scale: all scales 1.0 (a plain cast,
    as the published Ideogram file reportedly is). Returns (state, header metadata)."""
    linears = set(linear_names(model))
    state, layers = {}, {}
    for k, v in model.state_dict().items():
        module = k.rsplit(".", 1)[0]
        if module in linears and k.endswith(".weight"):
            scale = torch.tensor(1.0) if unit_scale else v.abs().amax() / 448.0
            w8 = (v / scale).to(torch.float8_e4m3fn)
            state[prefix + k] = w8.view(torch.uint8) if variant == "uint8" else w8
            scale_name = "scale_weight" if variant == "legacy" else "weight_scale"
            state[f"{prefix}{module}.{scale_name}"] = scale.float().reshape(())
            if variant in ("comfy_quant", "uint8"):
                blob = json.dumps({"format": "float8_e4m3fn"}).encode()
                state[f"{prefix}{module}.comfy_quant"] = torch.tensor(list(blob), dtype=torch.uint8)
            layers[prefix + module] = {"format": "float8_e4m3fn"}
        else:
            state[prefix + k] = v.to(torch.bfloat16)
    metadata = None
    if variant == "metadata":
        metadata = {"_quantization_metadata": json.dumps({"format_version": "1.0", "layers": layers})}
    if variant == "legacy":
        state[prefix + "scaled_fp8"] = torch.zeros(2, dtype=torch.float8_e4m3fn)
    return state, metadata


def nf4_state(model, nested: bool = False, naming: str = "original") -> dict:
    """ideogram-4-nf4: every nn.Linear replaced by bnb Linear4bit (quantised from bf16) and the
    model's state_dict() saved as bitsandbytes serialises it; the rest bf16."""
    model = _copy(model)
    if naming == "diffusers":
        _split_qkv(model)
    for name in linear_names(model):
        parent, _, child = name.rpartition(".")
        old = model.get_submodule(name)
        q = bnb.nn.Linear4bit(old.in_features, old.out_features, bias=old.bias is not None,
                              compute_dtype=torch.bfloat16, compress_statistics=nested, quant_type="nf4")
        q = q.to(torch.bfloat16)  # quantise from bf16 weights, as the release did (state dtype "bfloat16")
        q.load_state_dict({k: v.to(torch.bfloat16) for k, v in old.state_dict().items()})
        setattr(model.get_submodule(parent) if parent else model, child, q.to("cpu"))  # .to() quantises
    return {k: v if _is_bnb(k, v) else v.to(torch.bfloat16) for k, v in model.state_dict().items()}


def _is_bnb(key: str, value: torch.Tensor) -> bool:
    return value.dtype == torch.uint8 or any(s in key for s in (".absmax", ".quant_map", ".nested_"))


def _copy(model):
    clone = Ideogram4Transformer(model.config)
    clone.load_state_dict(model.state_dict())
    return clone


def _split_qkv(model) -> None:
    """Give each attention module diffusers' to_q/to_k/to_v/to_out.0 children (for NF4 saving)."""
    for layer in model.layers:
        att = layer.attention
        for i, name in enumerate("qkv"):
            part = nn.Linear(att.qkv.in_features, att.qkv.out_features // 3, bias=False)
            part.weight.data = att.qkv.weight.data.chunk(3)[i].clone()
            setattr(att, f"to_{name}", part)
        att.to_out = nn.ModuleList([att.o])
        del att.qkv, att.o


def write_sharded(folder: Path, state: dict, shards: int = 3, stem: str = "diffusion_pytorch_model") -> Path:
    keys = sorted(state)
    weight_map = {}
    for i in range(shards):
        name = f"{stem}-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: state[k] for k in keys[i::shards]}
        save(folder / name, part)
        weight_map.update({k: name for k in part})
    index = folder / f"{stem}.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return index


# ------------------------------------------------------------------------------------------------
# Oracle: the file's own numbers, dequantised by bitsandbytes / plain torch, in an fp32 model.


def dequantized_reference(path: Path, config: Ideogram4Config = TINY, prefix: str = "") -> Ideogram4Transformer:
    files = sorted(Path(path).glob("*.safetensors")) if Path(path).is_dir() else [Path(path)]
    raw = {}
    for f in files:
        raw.update(load_file(str(f)))
    raw = {k[len(prefix):]: v for k, v in raw.items() if k.startswith(prefix)}
    state = {}
    for k, v in raw.items():
        if k.endswith(".quant_state.bitsandbytes__nf4"):
            wkey = k[: -len(".quant_state.bitsandbytes__nf4")]
            stats = {s[len(wkey) + 1:]: t for s, t in raw.items() if s.startswith(wkey + ".")}
            qs = bnb.functional.QuantState.from_dict(stats, device=torch.device("cpu"))
            # Dequantised as one flat row: bitsandbytes 0.50.2's CPU kernel misreads the block
            # scales of rows that are not whole blocks (the tiny DiT's 160 and 208 inputs).
            shape, qs.shape = qs.shape, torch.Size([qs.shape.numel()])
            state[wkey] = bnb.functional.dequantize_4bit(raw[wkey], qs).float().view(shape)
    for k, v in raw.items():
        if k in state or any(s in k for s in (".absmax", ".quant_map", ".nested_", ".quant_state.", "comfy_quant", "scaled_fp8")):
            continue
        if k.endswith((".weight_scale", ".scale_weight")):
            continue
        if v.dtype == torch.uint8:  # comfy weight stored as uint8
            v = v.view(torch.float8_e4m3fn)
        if v.dtype == torch.float8_e4m3fn:
            module = k.rsplit(".", 1)[0]
            scale = raw.get(f"{module}.weight_scale", raw.get(f"{module}.scale_weight"))
            scale = scale.float().reshape(-1, 1) if scale.numel() > 1 else scale.float()
            v = v.float() * scale
        state[k] = v.float()
    state = diffusers_to_original(state)
    model = Ideogram4Transformer(config)
    model.load_state_dict(state)
    return model.eval()
