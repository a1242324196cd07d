"""The parts of Qwen3-VL that generation needs and text-to-image does not, read on demand.

    head = load_lm_head(encoder, lm_head_path=None, device="cuda", dtype=torch.bfloat16)
    vision = load_vision_tower(encoder, device="cuda", dtype=torch.bfloat16)   # describe only
    model = GenerativeQwen3VL(encoder.language_model, head, vision)

The text encoder is loaded without them (`text/encoder.py`), so plain text-to-image costs no memory
for them. Here they are read from the very files the encoder came from (refused when those files
changed since), or for the LM head from a separate file. The caller drops them after generating.

`GenerativeQwen3VL` is transformers' own `Qwen3VLModel` (vision embedding, deepstack injection,
3-D MRoPE positions) built on the meta device, with the encoder's language model and these parts
put in by reference: nothing is copied. It is tested against transformers'
`Qwen3VLForConditionalGeneration` on the same weights (tests/test_prompting_core.py).

What each published layout holds:
| layout | LM head | vision tower |
|---|---|---|
| Comfy-Org `qwen3vl_8b_fp8_scaled` / `_bf16` single files | yes | yes |
| `Qwen/Qwen3-VL-8B-Instruct` folder | yes | yes |
| official Ideogram 4 `text_encoder/` (NF4, FP8), diffusers layout | no: add a separate head file | yes |
| a text-only repack (language model only) | no: add a separate head file | no: describe is refused |
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import Qwen3VLConfig, Qwen3VLVisionConfig
from transformers.models.qwen3_vl.modeling_qwen3_vl import (Qwen3VLModel, Qwen3VLTextModel, Qwen3VLVisionModel,
                                                            Qwen3VLVisionRotaryEmbedding)

from ..files.text_encoder_files import LM_HEAD_KEY, TextEncoderFileError, open_lm_head_file, open_text_encoder_checkpoint
from .encoder import Ideogram4TextEncoder, _float_weight

LM_HEAD_DOWNLOAD = (
    "download the LM head that diffusers publishes for this encoder, Hugging Face repo "
    "'diffusers/qwen3-vl-8b-instruct-lm-head' (its diffusion_pytorch_model.safetensors, about 1.2 GB), into "
    "ComfyUI's models/text_encoders folder (the file itself, or the repo folder) and pick it in lm_head; or load "
    "Comfy-Org's qwen3vl_8b_fp8_scaled.safetensors, which includes the LM head"
)
VISION_DOWNLOAD = (
    "load a text encoder that includes Qwen3-VL's vision tower ('model.visual.*' or 'visual.*' tensors): "
    "Comfy-Org's qwen3vl_8b_fp8_scaled.safetensors, the text_encoder/ folder of the official Ideogram 4 "
    "release, or Qwen/Qwen3-VL-8B-Instruct"
)


class MissingPartError(TextEncoderFileError):
    """The loaded text encoder lacks the LM head or the vision tower; the message says what to get."""


def lm_head_problem(encoder: Ideogram4TextEncoder, lm_head_path: str | Path | None) -> str | None:
    """Why no LM head can be had (None when one can), without reading any weights."""
    if lm_head_path is not None or (encoder.source and encoder.source.has_lm_head):
        return None
    name = encoder.source.path.name if encoder.source else "this text encoder"
    return (f"{name} has no LM head ({LM_HEAD_KEY!r}), which generating text needs; it holds the language model "
            f"only, like the text_encoder/ folder of the official Ideogram 4 releases. To fix: {LM_HEAD_DOWNLOAD}.")


def vision_problem(encoder: Ideogram4TextEncoder) -> str | None:
    """Why no vision tower can be had (None when one can), without reading any weights."""
    if encoder.source and encoder.source.has_vision_tower:
        return None
    name = encoder.source.path.name if encoder.source else "this text encoder"
    return f"{name} has no vision tower, which describing an image needs. To fix: {VISION_DOWNLOAD}."


def load_lm_head(encoder: Ideogram4TextEncoder, lm_head_path: str | Path | None = None, *,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.bfloat16) -> nn.Linear:
    """The LM head (vocab, hidden) as a bias-free Linear in `dtype`: from `lm_head_path` when
    given, else from the encoder's own files. fp8 storage is dequantised (the head runs once per
    token on one row, so its exact values matter more than its size)."""
    problem = lm_head_problem(encoder, lm_head_path)
    if problem:
        raise MissingPartError(problem)
    source = open_lm_head_file(lm_head_path) if lm_head_path is not None else _reopen(encoder)
    try:
        weight = _float_weight(source.read_linear("lm_head", prefix=""))
    finally:
        source.weights.close()
    config = encoder.language_model.config
    if tuple(weight.shape) != (config.vocab_size, config.hidden_size):
        raise TextEncoderFileError(
            f"{source.path}: {LM_HEAD_KEY} has shape {tuple(weight.shape)}, but the text encoder needs "
            f"({config.vocab_size}, {config.hidden_size}) (vocabulary x hidden size): it belongs to another model"
        )
    head = nn.Linear(config.hidden_size, config.vocab_size, bias=False, device="meta")
    head.weight = nn.Parameter(weight.to(device=device, dtype=dtype), requires_grad=False)
    return head.eval()


def load_vision_tower(encoder: Ideogram4TextEncoder, *, device: torch.device | str = "cpu",
                      dtype: torch.dtype = torch.bfloat16) -> Qwen3VLVisionModel:
    """Qwen3-VL's vision tower from the encoder's own files, in `dtype` (quantised weights are
    dequantised: it runs once per image)."""
    problem = vision_problem(encoder)
    if problem:
        raise MissingPartError(problem)
    checkpoint = _reopen(encoder)
    try:
        prefix = checkpoint.vision_prefix
        config = Qwen3VLVisionConfig(**checkpoint.vision_config())
        config._attn_implementation = "sdpa"
        with torch.device("meta"):
            vision = Qwen3VLVisionModel(config)
        linears = {name for name, m in vision.named_modules() if isinstance(m, nn.Linear)}
        for name, param in list(vision.named_parameters()):
            module_name, _, param_name = name.rpartition(".")
            if module_name in linears and param_name == "weight":
                tensor = _float_weight(checkpoint.read_linear(module_name, prefix=prefix))
            else:
                tensor = checkpoint.read_dense(name, prefix=prefix)
            if tuple(tensor.shape) != tuple(param.shape):
                raise TextEncoderFileError(f"{checkpoint.path}: {prefix}{name} has shape {tuple(tensor.shape)}, "
                                           f"expected {tuple(param.shape)} for this vision config")
            setattr(vision.get_submodule(module_name), param_name,
                    nn.Parameter(tensor.to(device=device, dtype=dtype), requires_grad=False))
    finally:
        checkpoint.weights.close()
    # Rotary frequencies are computed, not stored: rebuild them off the meta device.
    vision.rotary_pos_emb = Qwen3VLVisionRotaryEmbedding(config).to(device)
    return vision.eval()


def _reopen(encoder: Ideogram4TextEncoder):
    """The encoder's checkpoint again, refused when its files changed since the encoder was loaded
    (the parts must belong to the language model in memory)."""
    source = encoder.source
    try:
        checkpoint = open_text_encoder_checkpoint(source.path)
    except (OSError, TextEncoderFileError) as exc:
        raise TextEncoderFileError(f"{source.path} cannot be read again ({exc}); reload the text encoder") from exc
    if checkpoint.fingerprint() != source.fingerprint:
        checkpoint.weights.close()
        raise TextEncoderFileError(
            f"{source.path} changed on disk since the text encoder was loaded; its LM head and vision tower must "
            "come from the same files as the loaded language model: reload the text encoder (queue the prompt again)"
        )
    return checkpoint


class GenerativeQwen3VL:
    """Qwen3-VL for decoding: the encoder's language model, an LM head and optionally a vision
    tower, all shared by reference inside a meta-built transformers `Qwen3VLModel`."""

    def __init__(self, language_model: Qwen3VLTextModel, lm_head: nn.Linear,
                 vision: Qwen3VLVisionModel | None = None):
        vision_config = vision.config.to_dict() if vision is not None else {}
        config = Qwen3VLConfig(text_config=language_model.config.to_dict(), vision_config=vision_config)
        with torch.device("meta"):
            model = Qwen3VLModel(config)
        model.language_model = language_model
        if vision is not None:
            model.visual = vision
        self.model = model.eval()
        self.lm_head = lm_head
        self.has_vision = vision is not None

    @property
    def config(self):
        return self.model.language_model.config

    @property
    def vision_config(self):
        return self.model.config.vision_config
