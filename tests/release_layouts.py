"""The header layout of each published Ideogram 4 DiT file, written down as facts, independently of
our loader and of the test writers in _checkpoint_factory.py.

Sources (public; no release file could be downloaded here, so these are what the public code that
reads the real files says about them):
- ideogram-ai/ideogram-4-fp8, ideogram-4-nf4: docs/ideogram4-spec.md §F.2, from the official
  loader (`quantized_loading.py`: FP8 detection on `.weight_scale` keys or float8_e4m3fn tensors,
  scale applied as `weight.to(bf16) * weight_scale[:, None]`; NF4 detection on
  `.quant_state.bitsandbytes__` keys, `Linear4bit(quant_type="nf4", compress_statistics=False)`)
  and from mflux's key list (all 211 Linear layers quantised). A third-party compiler for the real
  fp8 file declares each `<linear>.weight_scale` as a rank-1 F32 tensor of `out_features` entries.
- Comfy-Org/Ideogram-4 `ideogram4_fp8_scaled.safetensors`: spec §F.3, from ComfyUI's
  `convert_old_quants` / `quant_ops` (per-tensor scale, a `comfy_quant` JSON tensor per layer) and
  a third-party probe of the file (per-tensor e4m3, every one of the 211 scales 1.0).
What no source states (the safetensors `__metadata__` of the official files, the Comfy-Org file's
key prefix) is recorded as unknown and not asserted.
"""

from __future__ import annotations

# The released DiT: 34 blocks (spec §A); the Linear layers every published quantised file covers.
NUM_LAYERS = 34
TOP_LEVEL_LINEARS = ("input_proj", "llm_cond_proj", "t_embedding.mlp_in", "t_embedding.mlp_out", "adaln_proj",
                     "final_layer.adaln_modulation", "final_layer.linear")
BLOCK_LINEARS = ("attention.qkv", "attention.o", "feed_forward.w1", "feed_forward.w2", "feed_forward.w3",
                 "adaln_modulation")
NUM_QUANTISED_LINEARS = 211  # 7 + 34 x 6


def quantised_linears(num_layers: int = NUM_LAYERS) -> list[str]:
    return list(TOP_LEVEL_LINEARS) + [f"layers.{i}.{name}" for i in range(num_layers) for name in BLOCK_LINEARS]


# Per quantised Linear of out x in: suffix -> (safetensors dtype, shape as a function of (out, in)).
OFFICIAL_FP8 = {
    "naming": "original",  # layers.{i}.attention.qkv, not diffusers' to_q/to_k/to_v
    "prefix": "",
    "linear": {
        ".weight": ("F8_E4M3", lambda out, inp: [out, inp]),
        ".weight_scale": ("F32", lambda out, inp: [out]),  # one float32 per output row
    },
    "bias": "BF16",
    "other": "BF16",  # norms, embed_image_indicator
    "metadata": None,  # unknown
}

OFFICIAL_NF4 = {
    "naming": "original",
    "prefix": "",
    "linear": {
        ".weight": ("U8", lambda out, inp: [out * inp // 2, 1]),  # two 4-bit codes per byte
        ".weight.absmax": ("F32", lambda out, inp: [out * inp // 64]),  # blocksize 64, not nested
        ".weight.quant_map": ("F32", lambda out, inp: [16]),  # the NF4 code book
        ".weight.quant_state.bitsandbytes__nf4": ("U8", None),  # UTF-8 JSON, length varies
    },
    # The JSON in quant_state.bitsandbytes__nf4 (bitsandbytes QuantState.as_dict(packed=True)).
    "quant_state_json": {"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": "[out, in]"},
    "bias": "BF16",
    "other": "BF16",
    "metadata": None,  # unknown
}

COMFY_FP8_SCALED = {
    "naming": "original",
    "prefix": None,  # unknown: ComfyUI accepts none, "model.diffusion_model." or "model."
    "linear": {
        ".weight": ("F8_E4M3", lambda out, inp: [out, inp]),
        ".weight_scale": ("F32", lambda out, inp: []),  # per tensor, a scalar
        ".comfy_quant": ("U8", None),  # UTF-8 JSON
    },
    "comfy_quant_json": {"format": "float8_e4m3fn"},
    "scales_all_one": True,  # a plain e4m3 cast of the bf16 weights (third-party probe)
    "bias": "BF16",
    "other": "BF16",
    "metadata": None,
}
