"""Finding, recognising and reading Qwen3-VL text-encoder checkpoints (spec §F.2, §F.3, §F.5).

Accepted sources, all safetensors (nothing else is ever opened):
- a Hugging Face Qwen3-VL folder: `config.json` + `model*.safetensors` (+ `model.safetensors.index.json`),
  e.g. `text_encoder/` of the official Ideogram NF4 / FP8 repos or of a diffusers layout, or
  `Qwen/Qwen3-VL-8B-Instruct` itself; a pipeline root holding `text_encoder/` is accepted too;
- a single file such as Comfy-Org's `qwen3vl_8b_fp8_scaled.safetensors` or a bf16 repack.

Language-model keys are found under `model.language_model.` (Qwen3VLForConditionalGeneration) or
`language_model.` (Qwen3VLModel). Text-to-image reads nothing else. The vision tower
(`model.visual.*` / `visual.*`) and the LM head (`lm_head.weight`) are only detected from the
headers here; `text/generative.py` reads them when a magic prompt or a describe runs. A separate
LM-head file (diffusers' `qwen3-vl-8b-instruct-lm-head`: one `lm_head.weight`) is read by
`open_lm_head_file`.

Per Linear `M`, the stored weight may be:
- plain float: `M.weight`;
- fp8: `M.weight` (float8, or uint8 to be viewed as the format named by `M.comfy_quant`) with a
  float32 scale `M.weight_scale` (per row (out,) in the official release, per tensor in ComfyUI's
  format) or legacy `M.scale_weight`; no scale means 1.0;
- bitsandbytes NF4: packed `M.weight` plus `M.weight.absmax`, `M.weight.quant_map`,
  `M.weight.quant_state.bitsandbytes__nf4` (and `nested_*` when double-quantised).
"""

from __future__ import annotations

import contextlib
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import CheckpointError
from ..constants import TEXT_ENCODER_TAP_LAYERS
from .safetensors_io import SafetensorsHeader, TensorReader, read_header

LANGUAGE_MODEL_PREFIXES = ("model.language_model.", "language_model.")
# Where each layout keeps the vision tower, keyed by its language-model prefix.
VISION_PREFIXES = {"model.language_model.": "model.visual.", "language_model.": "visual."}
LM_HEAD_KEY = "lm_head.weight"
VISION_PROBE = "patch_embed.proj.weight"
REQUIRED_LAYERS = TEXT_ENCODER_TAP_LAYERS[-1] + 1  # 36: the last tap is the last layer

# Known Qwen3-VL-8B facts used when a single file carries no config (spec §C.1).
QWEN3VL_8B_ROPE_THETA = 5_000_000.0
QWEN3VL_8B_MROPE_SECTION = (24, 20, 20)
QWEN3VL_8B_MAX_POSITIONS = 262_144
QWEN3VL_RMS_NORM_EPS = 1e-6

NF4_STATE_SUFFIX = ".quant_state.bitsandbytes__nf4"
FP8_FORMATS = {"float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2}


class TextEncoderFileError(ValueError):
    """The given path is not a usable Qwen3-VL text encoder; the message says what it looks like."""


@dataclass
class Fp8Weight:
    """float8 weight and its float32 scale (shape () per tensor or (out, 1) per row)."""

    weight: torch.Tensor
    scale: torch.Tensor

    def dequantize(self) -> torch.Tensor:
        return self.weight.to(torch.float32) * self.scale


@dataclass
class Nf4Weight:
    """bitsandbytes packed 4-bit weight and its serialised quant-state tensors (keys as bnb names them)."""

    packed: torch.Tensor
    quant_stats: dict[str, torch.Tensor]


class SafetensorsWeights:
    """Lazy view of one or more safetensors files: validated headers up front (safetensors_io, the
    same bounded reader as the DiT loader), tensors read one at a time."""

    def __init__(self, headers: list[SafetensorsHeader]):
        self.headers = headers
        self.key_to_header = {key: h for h in headers for key in h.tensors}
        self.metadata = {k: v for h in headers for k, v in h.metadata.items()}
        self._stack = contextlib.ExitStack()
        self._readers: dict[Path, TensorReader] = {}

    @classmethod
    def open(cls, files: list[Path]) -> "SafetensorsWeights":
        return cls([_guarded(path, read_header, path) for path in files])

    def __contains__(self, key: str) -> bool:
        return key in self.key_to_header

    def keys(self):
        return self.key_to_header.keys()

    def get(self, key: str) -> torch.Tensor:
        header = self.key_to_header[key]
        if header.path not in self._readers:
            self._readers[header.path] = _guarded(header.path, self._stack.enter_context, TensorReader(header))
        return _guarded(header.path, self._readers[header.path].read, key)

    def dtype_name(self, key: str) -> str:
        return self.key_to_header[key].tensors[key].dtype

    def shape(self, key: str) -> list[int]:
        return list(self.key_to_header[key].tensors[key].shape)

    def close(self) -> None:
        self._stack.close()
        self._readers.clear()


def _guarded(path: Path, call, *args):
    """Run a safetensors_io call, turning its file errors into this module's error type."""
    try:
        return call(*args)
    except CheckpointError as exc:
        raise TextEncoderFileError(
            f"{path} is not a readable safetensors file ({exc}); expected a Qwen3-VL text encoder "
            "in safetensors format (the file may be truncated or corrupt)"
        ) from exc


@dataclass
class WeightFile:
    """Safetensors weights read by name under `prefix`, dequantised as stored (fp8 + scale, NF4)."""

    path: Path
    weights: SafetensorsWeights
    prefix: str

    def fingerprint(self) -> tuple:
        """Path, size and modification time of every file: reading a part later (the LM head, the
        vision tower) is refused when the files changed since the language model was loaded."""
        return tuple((str(h.path), h.file_size, h.mtime_ns) for h in self.weights.headers)

    def read_linear(self, name: str, prefix: str | None = None) -> torch.Tensor | Fp8Weight | Nf4Weight:
        """The weight of Linear `name` (e.g. "layers.3.mlp.up_proj") as it is stored; `prefix`
        defaults to the language model's."""
        base = (self.prefix if prefix is None else prefix) + name
        key = base + ".weight"
        if key + NF4_STATE_SUFFIX in self.weights:
            stats = {
                k[len(key) + 1 :]: self.weights.get(k)
                for k in self.weights.keys()
                if k.startswith(key + ".")
            }
            return Nf4Weight(self._require(key), stats)
        if any(k.endswith(".bitsandbytes__fp4") and k.startswith(key) for k in self.weights.keys()):
            raise TextEncoderFileError(f"{self.path}: {key} is bitsandbytes FP4; only NF4 is supported")
        weight = self._require(key)
        scale_key = next((k for k in (base + ".weight_scale", base + ".scale_weight") if k in self.weights), None)
        fp8_dtype = self._fp8_format(base, weight)
        if fp8_dtype is None and scale_key is None:
            return weight
        if fp8_dtype is not None and weight.dtype == torch.uint8:
            weight = weight.view(fp8_dtype)
        scale = self.weights.get(scale_key).to(torch.float32) if scale_key else torch.ones(())
        if scale.numel() == 1:
            scale = scale.reshape(())
        elif scale.numel() == weight.shape[0]:
            scale = scale.reshape(-1, *([1] * (weight.dim() - 1)))
        else:
            raise TextEncoderFileError(
                f"{self.path}: {scale_key} has {scale.numel()} values; expected 1 (per tensor) "
                f"or {weight.shape[0]} (per output row)"
            )
        if fp8_dtype is None:  # a scale on a float weight: treat as already-dequantised storage
            return weight.to(torch.float32) * scale
        return Fp8Weight(weight, scale)

    def read_dense(self, name: str, prefix: str | None = None) -> torch.Tensor:
        """A non-Linear tensor (embedding, norm weight), dequantised if it was stored scaled."""
        if name.endswith(".weight"):
            stored = self.read_linear(name[: -len(".weight")], prefix)
        else:
            stored = self._require((self.prefix if prefix is None else prefix) + name)
        if isinstance(stored, Nf4Weight):
            raise TextEncoderFileError(f"{self.path}: {name} is 4-bit packed; only Linear layers may be")
        return stored.dequantize() if isinstance(stored, Fp8Weight) else stored

    def _fp8_format(self, base: str, weight: torch.Tensor) -> torch.dtype | None:
        if weight.dtype in FP8_FORMATS.values():
            return weight.dtype
        fmt = self._comfy_format(base)
        if fmt is None:
            return None
        if fmt not in FP8_FORMATS:
            raise TextEncoderFileError(
                f"{self.path}: {base} uses ComfyUI quantisation format {fmt!r}; this loader reads "
                f"float8 ({', '.join(FP8_FORMATS)}), bitsandbytes NF4 and plain float weights"
            )
        return FP8_FORMATS[fmt]

    def _comfy_format(self, base: str) -> str | None:
        if base + ".comfy_quant" in self.weights:
            info = json.loads(bytes(self.weights.get(base + ".comfy_quant").tolist()).decode("utf-8"))
            return info.get("format")
        layers = self._header_layers
        entry = layers.get(base) or layers.get(base[len(self.prefix) :])
        return entry.get("format") if entry else None

    @functools.cached_property
    def _header_layers(self) -> dict[str, dict]:
        return _header_quantization_layers(self.weights.metadata)

    def _require(self, key: str) -> torch.Tensor:
        if key not in self.weights:
            raise TextEncoderFileError(f"{self.path}: missing tensor {key!r}; the checkpoint is incomplete")
        return self.weights.get(key)


@dataclass
class TextEncoderCheckpoint(WeightFile):
    """A recognised text-encoder checkpoint, weights not yet read."""

    text_config: dict = field(default_factory=dict)
    quantization_config: dict | None = None
    tokenizer_dir: Path | None = None
    config: dict = field(default_factory=dict)  # the whole config.json; {} for a single file

    @property
    def storage(self) -> str:
        """"nf4", "fp8" or "float": how the decoder's Linear weights are stored."""
        keys = self.weights.keys()
        if any(k.endswith(NF4_STATE_SUFFIX) for k in keys):
            return "nf4"
        probe = f"{self.prefix}layers.0.self_attn.q_proj.weight"
        base = probe[: -len(".weight")]
        scaled = any(base + s in self.weights for s in (".weight_scale", ".scale_weight", ".comfy_quant"))
        if scaled or self.weights.dtype_name(probe).startswith("F8"):
            return "fp8"
        return "float"

    @property
    def has_lm_head(self) -> bool:
        """An `lm_head.weight` of its own (Comfy-Org's single files, Qwen/Qwen3-VL-8B-Instruct)."""
        return LM_HEAD_KEY in self.weights

    @property
    def vision_prefix(self) -> str | None:
        """Key prefix of the vision tower, or None when the file has none."""
        prefix = VISION_PREFIXES[self.prefix]
        return prefix if prefix + VISION_PROBE in self.weights else None

    def vision_config(self) -> dict:
        """Qwen3VLVisionConfig fields: from config.json when the folder has one, else from the
        tensor shapes plus the published Qwen3-VL-8B facts (a single file carries no config)."""
        if self.vision_prefix is None:
            raise TextEncoderFileError(f"{self.path} has no vision tower")
        if self.config.get("vision_config"):
            return dict(self.config["vision_config"])
        return _inferred_vision_config(self.weights, self.vision_prefix, self.path)


def _header_quantization_layers(metadata: dict[str, str]) -> dict[str, dict]:
    """ComfyUI's optional `_quantization_metadata` header entry: {"layers": {name: {"format": ...}}}."""
    raw = metadata.get("_quantization_metadata")
    return json.loads(raw).get("layers", {}) if raw else {}


def open_text_encoder_checkpoint(path: str | Path) -> TextEncoderCheckpoint:
    """Recognise `path` (folder or single file) as a Qwen3-VL text encoder, or explain what it is."""
    path = Path(path)
    if not path.exists():
        raise TextEncoderFileError(f"{path} does not exist")
    folder = _model_folder(path) if path.is_dir() else None
    files = _weight_files(folder) if folder else [_single_file(path)]
    weights = SafetensorsWeights.open(files)
    try:
        prefix = _language_model_prefix(weights, path)
        config = _read_config(folder, path) if folder else {}
        text_config = _text_config(config, weights, prefix, path)
        quantization_config = config.get("quantization_config") or text_config.pop("quantization_config", None)
        _check_quantization_config(quantization_config, path)
    except Exception:
        weights.close()
        raise
    from ..text.tokenizer import find_tokenizer_folder

    tokenizer_dir = find_tokenizer_folder(folder) if folder else None
    return TextEncoderCheckpoint(path, weights, prefix, text_config, quantization_config, tokenizer_dir, config)


def open_lm_head_file(path: str | Path) -> WeightFile:
    """A separate LM head: a single .safetensors file, or a folder holding one (diffusers'
    `qwen3-vl-8b-instruct-lm-head` keeps `diffusion_pytorch_model.safetensors` beside its
    config.json), with an `lm_head.weight` of shape (vocab, hidden). Any text-encoder file that has
    an LM head works too: only that tensor is read."""
    path = Path(path)
    if not path.exists():
        raise TextEncoderFileError(f"{path} does not exist")
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [_single_file(path)]
    if not files:
        raise TextEncoderFileError(f"{path} holds no .safetensors file; expected an LM head with 'lm_head.weight'")
    weights = SafetensorsWeights.open(files)
    if LM_HEAD_KEY not in weights:
        weights.close()
        raise TextEncoderFileError(
            f"{path} has no {LM_HEAD_KEY!r} tensor, so it is not an LM head (it "
            f"{_describe_keys(list(weights.keys()))[:300]})"
        )
    return WeightFile(path, weights, "")


def _model_folder(path: Path) -> Path:
    """The folder holding the weights: `path` itself, or `path/text_encoder` for a pipeline root."""
    if not (path / "config.json").is_file() and (path / "text_encoder").is_dir():
        return path / "text_encoder"
    return path


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        files = sorted({_shard_path(folder, index, name) for name in weight_map.values()})
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise TextEncoderFileError(f"{index} lists shards that are missing: {', '.join(f.name for f in missing)}")
        return files
    files = sorted(folder.glob("model*.safetensors")) or sorted(folder.glob("*.safetensors"))
    if not files:
        others = sorted(p.name for p in folder.iterdir())[:8]
        raise TextEncoderFileError(
            f"{folder} has no .safetensors weights (found: {', '.join(others) or 'nothing'}); expected a "
            "Qwen3-VL text-encoder folder with config.json and model*.safetensors"
        )
    return files


def _shard_path(folder: Path, index: Path, name) -> Path:
    """A shard named by an index must be a .safetensors file inside the index's own folder: an
    index cannot send the loader to another folder (no '..', no absolute paths, no symlink out)."""
    shard = folder / name if isinstance(name, str) else None
    if shard is None or Path(name).is_absolute() or ".." in Path(name).parts or "\\" in name:
        raise TextEncoderFileError(f"{index} names a shard outside its folder: {str(name)[:200]!r}")
    if shard.suffix.lower() != ".safetensors":
        raise TextEncoderFileError(f"{index} names a shard that is not a .safetensors file: {name[:200]!r}; "
                                   "only safetensors are ever read")
    if shard.exists() and not shard.resolve().is_relative_to(folder.resolve()):
        raise TextEncoderFileError(f"{index} names a shard that links outside its folder: {name[:200]!r}")
    return shard


def _single_file(path: Path) -> Path:
    if path.suffix.lower() != ".safetensors":
        raise TextEncoderFileError(
            f"{path} is a {path.suffix or 'suffix-less'} file; only .safetensors text encoders are loaded "
            "(pickled .bin/.pt/.ckpt files are never opened, GGUF is not supported)"
        )
    return path


def _language_model_prefix(weights: SafetensorsWeights, path: Path) -> str:
    for prefix in LANGUAGE_MODEL_PREFIXES:
        if f"{prefix}embed_tokens.weight" in weights and f"{prefix}layers.0.self_attn.q_proj.weight" in weights:
            return prefix
    raise TextEncoderFileError(
        f"{path} {_describe_keys(list(weights.keys()))}; expected a Qwen3-VL text encoder with "
        "'model.language_model.*' or 'language_model.*' tensors (e.g. qwen3vl_8b_fp8_scaled.safetensors "
        "or the text_encoder/ folder of an Ideogram 4 release)"
    )


def _describe_keys(keys: list[str]) -> str:
    """A short guess at what a non-text-encoder checkpoint is, for error messages."""
    joined = "\n".join(keys)
    if any(k.endswith("embed_image_indicator.weight") or ".attention.qkv." in k or "llm_cond_proj" in k for k in keys):
        return "looks like an Ideogram 4 diffusion transformer (DiT), not a text encoder; load it with the model loader"
    if ".attention.to_q." in joined and "llm_cond" in joined:
        return "looks like a diffusers-format Ideogram 4 transformer, not a text encoder"
    if "decoder.up" in joined or "bn.running_mean" in keys or "decoder.up_blocks" in joined:
        return "looks like a VAE, not a text encoder"
    if "lora_" in joined or ".alpha" in joined:
        return "looks like a LoRA, not a text encoder"
    if any(k.startswith(("model.layers.", "layers.")) for k in keys):
        return (
            "looks like a text-only language model (keys 'model.layers.*' without the Qwen3-VL "
            "'language_model' prefix); Ideogram 4 needs the Qwen3-VL-8B language model"
        )
    if keys and all("visual." in k for k in keys):
        return "holds only a vision tower"
    if not keys:
        return "holds no tensors"
    return f"is not a recognised checkpoint (first keys: {', '.join(sorted(keys)[:4])})"


def _read_config(folder: Path, path: Path) -> dict:
    config_path = folder / "config.json"
    if not config_path.is_file():
        return {}
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise TextEncoderFileError(f"{config_path} is not valid JSON ({exc})") from exc
    model_type = config.get("model_type")
    if model_type not in (None, "qwen3_vl", "qwen3_vl_text"):
        raise TextEncoderFileError(
            f"{config_path} describes a {model_type!r} model; expected a Qwen3-VL text encoder (model_type 'qwen3_vl')"
        )
    return config


def _text_config(config: dict, weights: SafetensorsWeights, prefix: str, path: Path) -> dict:
    """Text config from config.json when present, checked against (or else inferred from) the shapes."""
    shapes = _shape_facts(weights, prefix)
    if config:
        text = dict(config.get("text_config", config))
        text.pop("model_type", None)
        for name, value in shapes.items():
            if name in text and text[name] != value:
                raise TextEncoderFileError(
                    f"{path}: config.json says {name}={text[name]} but the weights have {value}"
                )
        text.update({k: v for k, v in shapes.items() if k not in text})
    else:
        text = {
            **shapes,
            "rms_norm_eps": QWEN3VL_RMS_NORM_EPS,
            "max_position_embeddings": QWEN3VL_8B_MAX_POSITIONS,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": QWEN3VL_8B_ROPE_THETA,
                "mrope_section": list(_mrope_section(shapes["head_dim"])),
                "mrope_interleaved": True,
            },
        }
    if text["num_hidden_layers"] != REQUIRED_LAYERS:
        raise TextEncoderFileError(
            f"{path}: the language model has {text['num_hidden_layers']} layers; Ideogram 4 taps layers "
            f"{TEXT_ENCODER_TAP_LAYERS[0]}..{TEXT_ENCODER_TAP_LAYERS[-1]} of the {REQUIRED_LAYERS}-layer Qwen3-VL-8B"
        )
    return text


def _shape_facts(weights: SafetensorsWeights, prefix: str) -> dict:
    """Sizes read off tensor shapes (headers only). NF4 weights are packed, so Linear sizes come from
    the q/k norms (head_dim) and from bnb's quant-state JSON when needed."""
    vocab, hidden = weights.shape(prefix + "embed_tokens.weight")
    layer_prefix = prefix + "layers."
    layers = {int(k[len(layer_prefix) :].split(".")[0]) for k in weights.keys() if k.startswith(layer_prefix)}
    head_dim = weights.shape(prefix + "layers.0.self_attn.q_norm.weight")[0]
    q_out = _linear_out_features(weights, prefix + "layers.0.self_attn.q_proj")
    k_out = _linear_out_features(weights, prefix + "layers.0.self_attn.k_proj")
    intermediate = _linear_out_features(weights, prefix + "layers.0.mlp.gate_proj")
    return {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "num_hidden_layers": len(layers),
        "head_dim": head_dim,
        "num_attention_heads": q_out // head_dim,
        "num_key_value_heads": k_out // head_dim,
        "intermediate_size": intermediate,
    }


def _linear_out_features(weights: SafetensorsWeights, base: str) -> int:
    state_key = base + ".weight" + NF4_STATE_SUFFIX
    if state_key in weights:
        state = json.loads(bytes(weights.get(state_key).tolist()).decode("utf-8"))
        return int(state["shape"][0])
    return weights.shape(base + ".weight")[0]


# Qwen3-VL-8B's vision tower (its config.json; transformers' Qwen3VLVisionConfig defaults are the
# same): fixed facts that tensor shapes cannot show, keyed by the number of blocks.
QWEN3VL_VISION_FACTS = {27: {"num_heads": 16, "deepstack_visual_indexes": [8, 16, 24], "hidden_act": "gelu_pytorch_tanh"}}


def _inferred_vision_config(weights: SafetensorsWeights, prefix: str, path: Path) -> dict:
    """Vision config of a single file: sizes from the shapes, the rest from QWEN3VL_VISION_FACTS."""
    hidden, in_channels, temporal, patch, _ = weights.shape(prefix + VISION_PROBE)
    block_prefix = prefix + "blocks."
    depth = len({k[len(block_prefix):].split(".")[0] for k in weights.keys() if k.startswith(block_prefix)})
    deepstack_prefix = prefix + "deepstack_merger_list."
    deepstack = len({k[len(deepstack_prefix):].split(".")[0] for k in weights.keys() if k.startswith(deepstack_prefix)})
    facts = QWEN3VL_VISION_FACTS.get(depth)
    if facts is None or len(facts["deepstack_visual_indexes"]) != deepstack:
        raise TextEncoderFileError(
            f"{path}: its vision tower has {depth} blocks and {deepstack} deepstack mergers, which is not "
            "Qwen3-VL-8B's (27 and 3); a single file carries no config, so use a Qwen3-VL folder with config.json"
        )
    merged = _linear_out_features(weights, prefix + "merger.linear_fc1")
    return {
        **facts,
        "depth": depth,
        "hidden_size": hidden,
        "in_channels": in_channels,
        "temporal_patch_size": temporal,
        "patch_size": patch,
        "intermediate_size": _linear_out_features(weights, prefix + "blocks.0.mlp.linear_fc1"),
        "spatial_merge_size": round((merged / hidden) ** 0.5),
        "out_hidden_size": _linear_out_features(weights, prefix + "merger.linear_fc2"),
        "num_position_embeddings": weights.shape(prefix + "pos_embed.weight")[0],
    }


def _mrope_section(head_dim: int) -> tuple[int, int, int]:
    """Qwen3-VL-8B's [24, 20, 20] for head_dim 128, scaled for tiny test models. For text-only input
    the three position axes are equal, so the split does not change the result."""
    half = head_dim // 2
    if half == sum(QWEN3VL_8B_MROPE_SECTION):
        return QWEN3VL_8B_MROPE_SECTION
    h = w = max(half * 20 // 64, 0)
    return (half - h - w, h, w)


def _check_quantization_config(quantization_config: dict | None, path: Path) -> None:
    if not quantization_config:
        return
    method = quantization_config.get("quant_method")
    if method != "bitsandbytes" or not quantization_config.get("load_in_4bit"):
        raise TextEncoderFileError(
            f"{path}: quantization_config {method!r} is not supported; expected bitsandbytes 4-bit NF4, "
            "float8 weights with weight_scale, or plain float weights"
        )
    quant_type = quantization_config.get("bnb_4bit_quant_type", "nf4")
    if quant_type != "nf4":
        raise TextEncoderFileError(f"{path}: bitsandbytes quant type {quant_type!r} is not supported; only nf4")
