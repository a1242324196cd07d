"""Random LoRAs for the tiny Ideogram 4 models, written in each trainer's format, and the form of
the same update that diffusers 0.42.1 reads (the oracle: `Ideogram4Pipeline.load_lora_weights`).

Two canonical updates, written independently of the pack's converter:
- fused: one (up, down, alpha) per original module (`attention.qkv` fused, as ai-toolkit and kohya
  train it). Oracle: the `diffusion_model.` kohya/ai-toolkit file, which diffusers converts itself.
- split: independent to_q / to_k / to_v updates of different ranks (peft training on diffusers'
  model, OneTrainer). Oracle: diffusers' own format with alpha / rank folded into lora_B; the
  scales used are powers of two, so the fold is exact.
"""

from __future__ import annotations

import torch

PER_LAYER = ["attention.qkv", "attention.o", "feed_forward.w1", "feed_forward.w2", "feed_forward.w3",
             "adaln_modulation"]
SPLIT_NAMES = {"attention.to_q": 0, "attention.to_k": 1, "attention.to_v": 2}
FUSED_FORMATS = ["ai_toolkit", "kohya", "kohya_unet", "conditional_transformer"]
SPLIT_FORMATS = ["diffusers", "onetrainer", "peft_metadata"]
FORMATS = FUSED_FORMATS + SPLIT_FORMATS


def _shape(cfg, module: str) -> tuple[int, int]:
    h, f, a = cfg.hidden_size, cfg.intermediate_size, cfg.adaln_dim
    return {"attention.qkv": (3 * h, h), "attention.o": (h, h), "attention.to_out.0": (h, h),
            "attention.to_q": (h, h), "attention.to_k": (h, h), "attention.to_v": (h, h),
            "feed_forward.w1": (f, h), "feed_forward.w3": (f, h), "feed_forward.w2": (h, f),
            "adaln_modulation": (4 * h, a)}[module]


def _pair(gen, out, inp, rank, size):
    down = torch.randn(rank, inp, generator=gen) / inp**0.5
    up = size * torch.randn(out, rank, generator=gen) / rank**0.5
    return up, down


def fused_update(cfg, rank=4, alpha=2.0, seed=0, size=0.5) -> dict:
    """{'layers.N.<original module>': (up, down, alpha)} for every per-layer module."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for n in range(cfg.num_layers):
        for module in PER_LAYER:
            up, down = _pair(gen, *_shape(cfg, module), rank, size)
            out[f"layers.{n}.{module}"] = (up, down, alpha)
    return out


def split_update(cfg, ranks=(4, 2, 8), seed=0, size=0.5) -> dict:
    """{'layers.N.<diffusers module>': (up, down, alpha)} with independent q/k/v of `ranks` and
    alpha = rank / 2 (scale 0.5) everywhere, so folding alpha into lora_B is exact."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for n in range(cfg.num_layers):
        for module in ["attention.to_q", "attention.to_k", "attention.to_v", "attention.to_out.0",
                       "feed_forward.w1", "feed_forward.w2", "feed_forward.w3", "adaln_modulation"]:
            rank = ranks[SPLIT_NAMES[module]] if module in SPLIT_NAMES else ranks[0]
            up, down = _pair(gen, *_shape(cfg, module), rank, size)
            out[f"layers.{n}.{module}"] = (up, down, rank / 2)
    return out


def write_format(update: dict, fmt: str) -> tuple[dict, dict | None]:
    """(state dict, safetensors metadata) of `update` in the file format `fmt`."""
    state, metadata = {}, None
    for module, (up, down, alpha) in update.items():
        if fmt == "ai_toolkit":
            state[f"diffusion_model.{module}.lora_A.weight"] = down
            state[f"diffusion_model.{module}.lora_B.weight"] = up * (alpha / down.shape[0])
        elif fmt == "conditional_transformer":
            state[f"conditional_transformer.{module}.lora_A.weight"] = down
            state[f"conditional_transformer.{module}.lora_B.weight"] = up * (alpha / down.shape[0])
        elif fmt == "kohya":
            state[f"diffusion_model.{module}.lora_down.weight"] = down
            state[f"diffusion_model.{module}.lora_up.weight"] = up
            state[f"diffusion_model.{module}.alpha"] = torch.tensor(alpha)
        elif fmt in ("kohya_unet", "onetrainer"):
            name = ("lora_unet_" if fmt == "kohya_unet" else "lora_transformer_") + module.replace(".", "_")
            state[f"{name}.lora_down.weight"] = down
            state[f"{name}.lora_up.weight"] = up
            state[f"{name}.alpha"] = torch.tensor(alpha)
        elif fmt == "diffusers_shared":  # diffusers' own split of a fused qkv: one down for q, k and v
            scaled = up * (alpha / down.shape[0])
            if module.endswith("attention.qkv"):
                base = module.removesuffix("qkv")
                for part, rows in zip("qkv", scaled.chunk(3)):
                    state[f"transformer.{base}to_{part}.lora_A.weight"] = down.clone()
                    state[f"transformer.{base}to_{part}.lora_B.weight"] = rows
            else:
                name = module.replace("attention.o", "attention.to_out.0")
                state[f"transformer.{name}.lora_A.weight"] = down
                state[f"transformer.{name}.lora_B.weight"] = scaled
        elif fmt == "diffusers":
            state[f"transformer.{module}.lora_A.weight"] = down
            state[f"transformer.{module}.lora_B.weight"] = up * (alpha / down.shape[0])
        elif fmt == "peft_metadata":  # scale carried by peft's LoraConfig in the file's metadata
            state[f"transformer.{module}.lora_A.weight"] = down
            state[f"transformer.{module}.lora_B.weight"] = up
        else:
            raise ValueError(fmt)
    if fmt == "peft_metadata":
        import json

        ranks = {m: d.shape[0] for m, (_, d, _) in update.items()}
        alphas = {m: a for m, (_, _, a) in update.items()}
        base = min(ranks.values())
        config = {"transformer.r": base, "transformer.lora_alpha": base / 2,
                  "transformer.rank_pattern": {m: r for m, r in ranks.items() if r != base},
                  "transformer.alpha_pattern": {m: a for m, a in alphas.items() if a != base / 2},
                  "transformer.target_modules": sorted({m.split(".", 2)[2] for m in update})}
        metadata = {"format": "pt", "lora_adapter_metadata": json.dumps(config)}
    return {k: v.contiguous() for k, v in state.items()}, metadata


def oracle_state(update: dict) -> dict:
    """The same update in a form diffusers 0.42.1 loads onto `transformer` (see the module doc)."""
    split = any(".to_q" in m for m in update)
    return write_format(update, "diffusers" if split else "kohya")[0]


def expected_delta(update: dict, module: str) -> torch.Tensor:
    up, down, alpha = update[module]
    return (up @ down) * (alpha / down.shape[0])
