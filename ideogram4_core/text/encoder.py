"""The Ideogram 4 text encoder: Qwen3-VL-8B's language model tapped at 13 layers (spec §C).

    encoder = load_text_encoder("qwen3vl_8b_fp8_scaled.safetensors", device="cuda")
    features = encoder.encode("a red fox in the snow").features   # (1, n, 53248) float32
    encoder.offload()                                              # weights back to CPU

Only the language model is built (transformers' `Qwen3VLTextModel`); the vision tower and
`lm_head` are not allocated or read here. Weights are streamed from the files one tensor at a time
into a model created on the meta device, so the checkpoint is never held twice in memory. What
else the files hold is recorded in `encoder.source` (from the headers alone), so the magic prompt
and describe can read the LM head and the vision tower on demand (`text/generative.py`).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from torch import nn
from transformers import Qwen3VLTextConfig
from transformers.masking_utils import create_causal_mask
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextModel, Qwen3VLTextRotaryEmbedding

from ..constants import MAX_TEXT_TOKENS, TEXT_ENCODER_TAP_LAYERS
from ..model.quant import FP8Linear, dequantize_nf4, nf4_linear_from_float, nf4_linear_from_packed, quantize_fp8_per_row
from ..files.text_encoder_files import (
    Fp8Weight,
    Nf4Weight,
    TextEncoderCheckpoint,
    TextEncoderFileError,
    open_text_encoder_checkpoint,
)
from .tokenizer import Qwen3VLTokenizer, bundled_tokenizer, load_tokenizer_folder

QUANTIZE_CHOICES = ("auto", "none", "fp8", "nf4")

# transformers 4.57 (the first release with Qwen3-VL) and 5.x spell two things differently: the RoPE
# settings (rope_theta + rope_scaling, or one rope_parameters dict) and create_causal_mask's
# arguments. Both are bridged here, so the pack runs on either (README, "Install into an existing
# ComfyUI"); tests/test_dependency_floors.py runs the text-encoder tests on 4.57.
_TRANSFORMERS_5 = int(transformers.__version__.split(".")[0]) >= 5
_MASK_PARAMETERS = inspect.signature(create_causal_mask).parameters


def text_config_for_transformers(text: dict) -> dict:
    """A Qwen3-VL text config dict in the form the installed transformers reads: 5.x reads
    rope_parameters (and converts the 4.57 form itself); 4.57 needs rope_theta + rope_scaling."""
    if _TRANSFORMERS_5 or "rope_parameters" not in text:
        return text
    text = dict(text)
    rope = dict(text.pop("rope_parameters"))
    text["rope_theta"] = rope.pop("rope_theta")
    text["rope_scaling"] = rope
    return text


def _causal_mask(config, embeds: torch.Tensor, mask: torch.Tensor | None, positions: torch.Tensor):
    """transformers' causal mask for one uncached forward pass, whichever version is installed."""
    kwargs = {"config": config, "attention_mask": mask, "position_ids": positions}
    kwargs["inputs_embeds" if "inputs_embeds" in _MASK_PARAMETERS else "input_embeds"] = embeds
    kwargs["cache" if "cache" in _MASK_PARAMETERS else "past_key_values"] = None
    if "cache_position" in _MASK_PARAMETERS:  # 4.57
        kwargs["cache_position"] = torch.arange(embeds.shape[1], device=embeds.device)
    return create_causal_mask(**kwargs)


@dataclass(frozen=True)
class CheckpointSource:
    """Where a loaded encoder came from and which optional parts those files hold."""

    path: Path
    fingerprint: tuple  # files, sizes and mtimes at load time (see WeightFile.fingerprint)
    has_lm_head: bool  # an lm_head.weight of its own
    has_vision_tower: bool


@dataclass
class TextFeatures:
    """Encoder output for a batch of captions.

    features: (B, n, hidden * 13) float32, feature index = channel * 13 + tap; padding rows are 0.
    attention_mask: (B, n) bool, True on real tokens; batches are left-padded to the longest caption.
    token_counts: real (framed) tokens per caption.
    """

    features: torch.Tensor
    attention_mask: torch.Tensor
    token_counts: list[int]


class Ideogram4TextEncoder:
    """A loaded Qwen3-VL language model plus its tokenizer. Not an nn.Module: `to()` moves the weights."""

    def __init__(self, language_model: Qwen3VLTextModel, tokenizer: Qwen3VLTokenizer, description: str,
                 source: CheckpointSource | None = None):
        self.language_model = language_model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.description = description
        self.source = source

    # Where `encode` computes; None: where the embedding is. A host that keeps some weights on an
    # offload device and streams them (ComfyUI's partial loading) sets its compute device here.
    execution_device: torch.device | None = None

    @property
    def device(self) -> torch.device:
        return self.execution_device or self.language_model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """Activation dtype (the embedding's dtype)."""
        return self.language_model.embed_tokens.weight.dtype

    @property
    def feature_dim(self) -> int:
        """53248 for Qwen3-VL-8B (4096 channels x 13 taps)."""
        return self.language_model.config.hidden_size * len(TEXT_ENCODER_TAP_LAYERS)

    def memory_bytes(self) -> int:
        """Bytes held by weights and buffers (for host memory accounting)."""
        tensors = list(self.language_model.parameters()) + list(self.language_model.buffers())
        return sum(t.numel() * t.element_size() for t in tensors)

    def to(self, device: torch.device | str) -> "Ideogram4TextEncoder":
        self.language_model.to(device)
        return self

    def offload(self, device: torch.device | str = "cpu") -> "Ideogram4TextEncoder":
        """Move the weights off the accelerator (call right after encoding)."""
        return self.to(device)

    def count_tokens(self, caption: str) -> int:
        return self.tokenizer.count_tokens(caption)

    def tokenize(self, caption: str) -> list[int]:
        """Framed ids; raises CaptionTooLongError above 2048 tokens."""
        return self.tokenizer.tokenize_caption(caption, MAX_TEXT_TOKENS)

    @torch.no_grad()
    def encode(self, captions: str | Sequence[str]) -> TextFeatures:
        """Tokenize (framing, 2048 limit) and run all 36 layers; see `encode_token_ids`."""
        captions = [captions] if isinstance(captions, str) else list(captions)
        if not captions:
            raise ValueError("no caption to encode")
        return self.encode_token_ids([self.tokenize(c) for c in captions])

    @torch.no_grad()
    def encode_token_ids(self, batch: Sequence[Sequence[int]]) -> TextFeatures:
        """Features of already-framed token ids, left-padding the batch like the reference."""
        lm = self.language_model
        vocab = lm.config.vocab_size
        for ids in batch:
            if not ids or max(ids) >= vocab:
                raise ValueError(f"token ids must be non-empty and below the vocabulary size {vocab}")
        ids, mask, positions = _left_pad(batch, self.tokenizer.pad_id, self.device)
        taps = _run_tapped_layers(lm, ids, mask, positions)
        features = taps.reshape(*taps.shape[:2], -1)
        features = torch.where(mask[..., None], features, torch.zeros((), dtype=features.dtype, device=features.device))
        return TextFeatures(features, mask, [len(x) for x in batch])


def _left_pad(batch: Sequence[Sequence[int]], pad_id: int, device: torch.device):
    """(ids, mask, positions) of shape (B, n): real tokens at the right, positions 0..len-1 on them."""
    n = max(len(x) for x in batch)
    ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), n), dtype=torch.bool)
    positions = torch.zeros((len(batch), n), dtype=torch.long)
    for row, tokens in enumerate(batch):
        start = n - len(tokens)
        ids[row, start:] = torch.as_tensor(list(tokens), dtype=torch.long)
        mask[row, start:] = True
        positions[row, start:] = torch.arange(len(tokens))
    return ids.to(device), mask.to(device), positions.to(device)


def _run_tapped_layers(
    lm: Qwen3VLTextModel, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    """Outputs of the tapped decoder layers BEFORE the final norm, as (B, n, hidden, 13) float32.

    Text-only input puts the same position on all three MRoPE axes. Without padding no mask is
    passed, so attention can take the plain causal path.
    """
    embeds = lm.embed_tokens(ids)
    padded = not bool(mask.all())
    causal_mask = _causal_mask(lm.config, embeds, mask.long() if padded else None, positions)
    rope = lm.rotary_emb(embeds, positions[None].expand(3, -1, -1))
    taps_shape = (*ids.shape, lm.config.hidden_size, len(TEXT_ENCODER_TAP_LAYERS))
    taps = torch.empty(taps_shape, dtype=torch.float32, device=ids.device)
    tap_slot = {layer: slot for slot, layer in enumerate(TEXT_ENCODER_TAP_LAYERS)}
    hidden = embeds
    for index, layer in enumerate(lm.layers):
        hidden = layer(hidden, attention_mask=causal_mask, position_ids=positions, position_embeddings=rope)
        if index in tap_slot:
            taps[..., tap_slot[index]] = hidden
    return taps


def load_text_encoder(
    path: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    quantize: str = "auto",
    tokenizer_path: str | Path | None = None,
) -> Ideogram4TextEncoder:
    """Load the Qwen3-VL language model from a folder or single safetensors file.

    quantize: "auto" keeps the file's storage (fp8 stays fp8, NF4 stays NF4, float becomes `dtype`);
    "none" dequantises everything to `dtype`; "fp8" / "nf4" quantise float weights on load
    (per-row e4m3 / bitsandbytes NF4). `dtype` is the activation dtype (bf16 as in the reference,
    float32 for exact CPU checks). The tokenizer comes from `tokenizer_path`, else the checkpoint
    folder, else the bundled copy.
    """
    if quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"quantize must be one of {QUANTIZE_CHOICES}, got {quantize!r}")
    checkpoint = open_text_encoder_checkpoint(path)
    try:
        storage = checkpoint.storage
        source = CheckpointSource(Path(path), checkpoint.fingerprint(), checkpoint.has_lm_head,
                                  checkpoint.vision_prefix is not None)
        language_model = _build_language_model(checkpoint, torch.device(device), dtype, quantize)
    finally:
        checkpoint.weights.close()
    tokenizer_dir = tokenizer_path or checkpoint.tokenizer_dir
    tokenizer = load_tokenizer_folder(tokenizer_dir) if tokenizer_dir else bundled_tokenizer()
    if tokenizer.vocab_size > language_model.config.vocab_size:
        raise TextEncoderFileError(
            f"{path}: the embedding has {language_model.config.vocab_size} rows but the tokenizer "
            f"({tokenizer.source}) produces ids up to {tokenizer.vocab_size - 1}"
        )
    target = storage if quantize == "auto" else "float" if quantize == "none" else quantize
    description = f"Qwen3-VL text encoder from {Path(path).name} (stored {storage}, running {target} / {dtype})"
    return Ideogram4TextEncoder(language_model, tokenizer, description, source)


def _build_language_model(
    checkpoint: TextEncoderCheckpoint, device: torch.device, dtype: torch.dtype, quantize: str
) -> Qwen3VLTextModel:
    config = Qwen3VLTextConfig(**text_config_for_transformers(checkpoint.text_config))
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        lm = Qwen3VLTextModel(config)
    for name, module in list(lm.named_modules()):
        if isinstance(module, nn.Linear):
            bias = checkpoint.read_dense(name + ".bias") if module.bias is not None else None
            lm.set_submodule(name, _make_linear(checkpoint.read_linear(name), bias, quantize, dtype, device))
    for name, param in list(lm.named_parameters()):
        if param.device.type == "meta":
            if name == "norm.weight" and checkpoint.prefix + name not in checkpoint.weights:
                tensor = torch.ones(param.shape, device=device, dtype=dtype)  # final norm: never used
            else:
                tensor = checkpoint.read_dense(name).to(device=device, dtype=dtype)
            module_name, _, param_name = name.rpartition(".")
            setattr(lm.get_submodule(module_name), param_name, nn.Parameter(tensor, requires_grad=False))
    # Rotary frequencies are a computed buffer, not a weight: rebuild it (float32) off the meta device.
    lm.rotary_emb = Qwen3VLTextRotaryEmbedding(config).to(device)
    return lm


def _make_linear(
    stored, bias: torch.Tensor | None, quantize: str, dtype: torch.dtype, device: torch.device
) -> nn.Module:
    """One Linear in the requested form; `stored` is a float tensor, Fp8Weight or Nf4Weight."""
    if quantize == "auto":
        quantize = "fp8" if isinstance(stored, Fp8Weight) else "nf4" if isinstance(stored, Nf4Weight) else "none"
    if quantize == "nf4" and isinstance(stored, Nf4Weight):
        return nf4_linear_from_packed(stored.packed, stored.quant_stats, bias, dtype, device)
    if quantize == "fp8" and isinstance(stored, Fp8Weight):
        return _exact_fp8_linear(stored.weight.to(device), stored.scale.to(device), _to(bias, device, dtype))
    weight = _float_weight(stored)
    if quantize == "nf4":
        return nf4_linear_from_float(weight, bias, dtype, device)
    if quantize == "fp8":
        fp8, scale = quantize_fp8_per_row(weight)
        return _exact_fp8_linear(fp8.to(device), scale.to(device), _to(bias, device, dtype))
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    linear.weight = nn.Parameter(weight.to(device=device, dtype=dtype), requires_grad=False)
    if bias is not None:
        linear.bias = nn.Parameter(bias.to(device=device, dtype=dtype), requires_grad=False)
    return linear


def _exact_fp8_linear(weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> FP8Linear:
    """FP8 weights, but activations stay in the compute dtype: the layer dequantises its weight
    instead of using an FP8 tensor-core matmul (which would also quantise the activations). The
    encoder runs once per caption, so exactness against the reference matters more than speed."""
    layer = FP8Linear(weight, scale, bias)
    layer.matmul = "dequantize"
    return layer


def _float_weight(stored) -> torch.Tensor:
    if isinstance(stored, Fp8Weight):
        return stored.dequantize()
    if isinstance(stored, Nf4Weight):
        return dequantize_nf4(nf4_linear_from_packed(stored.packed, stored.quant_stats, None, torch.float32, "cpu"))
    return stored


def _to(tensor: torch.Tensor | None, device: torch.device, dtype: torch.dtype) -> torch.Tensor | None:
    return None if tensor is None else tensor.to(device=device, dtype=dtype)
