"""Recognise an Ideogram 4 DiT checkpoint from safetensors headers (spec §F, DESIGN §4).

Finds the files (single file, component folder, pipeline folder with `transformer/` and
`unconditional_transformer/`, sharded `*.safetensors.index.json`), the key prefix
(`model.diffusion_model.`, `model.` or none), the naming (original `qkv`/`o` or diffusers
`to_q/to_k/to_v`/`to_out.0`), how every Linear layer is stored (plain float, bitsandbytes NF4,
FP8 with per-row or per-tensor scale in the official, Comfy `comfy_quant` /
`_quantization_metadata` or legacy `scaled_fp8` spelling) and the model config, and checks every
tensor's shape against that config. Only headers are read, plus the few tiny JSON blobs that
Comfy stores as `*.comfy_quant` tensors.
"""

from __future__ import annotations

import json
import math
import re
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .errors import (
    CheckpointError,
    CheckpointMismatchError,
    CorruptCheckpointError,
    NotIdeogram4Error,
    NotSafetensorsError,
    UnsupportedQuantizationError,
)
from ..model.transformer import Ideogram4Config, Ideogram4Transformer
from .safetensors_io import PICKLE_SUFFIXES, SafetensorsHeader, TensorInfo, TensorReader, read_header

INDICATOR_KEY = "embed_image_indicator.weight"
PIPELINE_COMPONENTS = ("transformer", "unconditional_transformer")
MAX_INDEX_BYTES = 32 * 1024 * 1024
NF4_STATE = ".quant_state.bitsandbytes__nf4"
BNB_SUFFIXES = (".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map", NF4_STATE)
FP8_DTYPES = {"F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
COMFY_FP8_FORMATS = {"float8_e4m3fn", "float8_e5m2"}
FLOAT_DTYPES = {"F32", "BF16", "F16"}
_SPLIT_QKV = re.compile(r"^(layers\.\d+\.attention\.)qkv$")
_O_PROJ = re.compile(r"^(layers\.\d+\.attention\.)o$")

# What a foreign file looks like, by a key fragment it must contain; the first match wins
# (LoRAs first: they repeat their base model's names).
FOREIGN_MODELS = (
    ("lora_A.", "a LoRA (load it with a LoRA loader)"),
    ("lora_down.", "a LoRA (load it with a LoRA loader)"),
    ("double_blocks.", "a Flux diffusion model"),
    ("single_transformer_blocks.", "a Flux diffusion model in diffusers layout"),
    ("joint_blocks.", "a Stable Diffusion 3 diffusion model"),
    ("input_blocks.", "a Stable Diffusion (SD1.x / SD2 / SDXL) UNet checkpoint"),
    ("language_model.layers.", "a Qwen3-VL text encoder (load it with the Ideogram 4 text encoder loader)"),
    ("self_attn.q_proj.", "a language-model text encoder (Qwen / Llama style)"),
    ("text_model.encoder.layers.", "a CLIP text encoder"),
    ("SelfAttention.q.", "a T5 text encoder"),
    ("decoder.up.", "a VAE (autoencoder)"),
    ("decoder.up_blocks.", "a VAE (autoencoder) in diffusers layout"),
    ("down_blocks.", "a diffusers UNet"),
)


@dataclass
class StoredLinear:
    """How one stored Linear (`base` = full key without `.weight`) is kept in the file."""

    base: str
    kind: str  # "plain" | "fp8" | "nf4"
    out_features: int
    in_features: int
    fp8_dtype: str | None = None  # "float8_e4m3fn" / "float8_e5m2"
    scale_key: str | None = None  # `.weight_scale` or legacy `.scale_weight`; None = scale 1
    scale_per: str | None = None  # "row" | "tensor"
    variant: str = ""  # "official", "comfy_quant", "_quantization_metadata", "legacy scaled_fp8", "bitsandbytes"
    full_precision: bool = False  # comfy "full_precision_matrix_mult": never use an FP8 matmul
    nf4_blocksize: int | None = None
    nf4_nested: bool = False


@dataclass
class CheckpointInfo:
    """Everything detection found; `summary()` is the human-readable form."""

    path: Path  # as given
    layout: str  # "single_file" | "folder" | "official_folder" | "diffusers_folder"
    component: str | None  # pipeline component for folder layouts
    files: list[Path]
    sharded: bool
    headers: list[SafetensorsHeader] = field(repr=False)
    tensors: dict[str, tuple[int, TensorInfo]] = field(repr=False)  # full key -> (file index, info)
    prefix: str = ""
    naming: str = "original"  # "original" | "diffusers"
    config: Ideogram4Config | None = None
    linears: dict[str, list[StoredLinear]] = field(default_factory=dict, repr=False)  # original name -> parts
    ignored_keys: list[str] = field(default_factory=list, repr=False)
    dtypes: dict[str, int] = field(default_factory=dict)  # dtype of unquantised floats -> tensor count

    @property
    def quantization(self) -> str:
        """"nf4", "fp8" or "none" (the kind most Linear layers use)."""
        kinds = [p.kind for parts in self.linears.values() for p in parts if p.kind != "plain"]
        return max(set(kinds), key=kinds.count) if kinds else "none"

    def quantization_label(self) -> str:
        parts = [p for ps in self.linears.values() for p in ps]
        quantised = [p for p in parts if p.kind != "plain"]
        if not quantised:
            return "none (plain " + "/".join(sorted(self.dtypes)) + ")"
        first = quantised[0]
        if first.kind == "nf4":
            stats = "nested (double-quantised) statistics" if first.nf4_nested else "plain statistics"
            what = f"bitsandbytes NF4, blocksize {first.nf4_blocksize}, {stats}"
        else:
            scale = {"row": "per-row", "tensor": "per-tensor", None: "no"}[first.scale_per]
            what = f"FP8 {first.fp8_dtype}, {scale} scales ({first.variant})"
        return f"{what}; {len(quantised)} of {len(parts)} linear weights"

    @property
    def total_bytes(self) -> int:
        return sum(h.file_size for h in self.headers)

    def fingerprint(self) -> tuple:
        """Changes when any file is replaced or modified (size, mtime); nodes can cache on it."""
        return tuple((str(h.path), h.file_size, h.mtime_ns) for h in self.headers)

    def summary(self) -> str:
        c = self.config
        where = {
            "single_file": "single file",
            "folder": "folder",
            "official_folder": f"official pipeline folder, component '{self.component}'",
            "diffusers_folder": f"diffusers pipeline folder, component '{self.component}'",
        }[self.layout]
        files = f"{len(self.files)} shards (index)" if self.sharded else "1 file"
        lines = [
            f"Ideogram 4 transformer: {self.path}",
            f"  layout: {where}, {files}, {self.total_bytes / 1e9:.2f} GB",
            f"  keys: {self.naming} naming, prefix {self.prefix!r}",
            f"  quantisation: {self.quantization_label()}",
            f"  config: {c.num_layers} layers, hidden {c.hidden_size} ({c.num_heads} heads x {c.head_dim}), "
            f"ffn {c.intermediate_size}, adaln {c.adaln_dim}, text features {c.llm_features_dim}, "
            f"channels {c.in_channels}",
        ]
        if self.ignored_keys:
            n, first = len(self.ignored_keys), self.ignored_keys[0]
            lines.append(f"  ignored: {n} tensors outside {self.prefix!r} (e.g. {first!r})")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Finding the files


@dataclass
class Sources:
    layout: str  # "single_file" | "folder" | "pipeline_folder" (refined to official/diffusers later)
    component: str | None
    files: list[Path]
    weight_map: dict[str, str] | None = None  # from a shard index
    index: Path | None = None


def resolve_files(path: str | Path, component: str | None = None) -> Sources:
    """Find the safetensors file(s) of one transformer under `path`."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder.", path)
    if path.is_file():
        if path.name.endswith(".safetensors.index.json"):
            return _read_index(path, Sources("folder", None, []))
        return Sources("single_file", None, [path])
    layout = "folder"
    if any((path / c).is_dir() for c in PIPELINE_COMPONENTS):
        component = component or "transformer"
        if component not in PIPELINE_COMPONENTS:
            raise CheckpointError(
                f"{path}: unknown component {component!r}; expected one of {PIPELINE_COMPONENTS}.", path
            )
        if not (path / component).is_dir():
            raise CheckpointError(f"{path}: this pipeline folder has no '{component}/' subfolder.", path)
        path, layout = path / component, "pipeline_folder"
    sources = Sources(layout, component, [])
    indexes = sorted(path.glob("*.safetensors.index.json"))
    if len(indexes) == 1:
        return _read_index(indexes[0], sources)
    files = sorted(path.glob("*.safetensors"))
    preferred = [f for f in files if f.name == "diffusion_pytorch_model.safetensors"]
    if len(indexes) > 1 or (len(files) > 1 and not preferred):
        names = [p.name for p in (indexes if len(indexes) > 1 else files)]
        raise CheckpointError(f"{path}: several candidate files ({', '.join(names)}); choose one file.", path)
    if files:
        sources.files = preferred or files
        return sources
    pickles = sorted(p.name for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise NotSafetensorsError(
            f"{path}: holds only pickle files ({', '.join(pickles)}); they are never loaded because "
            "unpickling can run code. Use the .safetensors release.",
            path,
        )
    raise CheckpointError(f"{path}: no .safetensors file in this folder.", path)


def _read_index(index: Path, sources: Sources) -> Sources:
    if index.stat().st_size > MAX_INDEX_BYTES:
        raise CorruptCheckpointError(f"{index}: the shard index is implausibly large.", index)
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        assert isinstance(weight_map, dict) and all(isinstance(v, str) for v in weight_map.values())
    except (ValueError, KeyError, TypeError, AssertionError, RecursionError, UnicodeDecodeError):
        raise CorruptCheckpointError(
            f"{index}: not a valid shard index (needs a 'weight_map' of key -> file).", index
        ) from None
    for name in dict.fromkeys(weight_map.values()):
        # Shards must sit next to the index: no paths, so an index cannot point us at other files.
        if Path(name).name != name or name in ("", ".", ".."):
            raise CorruptCheckpointError(f"{index}: shard name {name!r} is not a plain file name; refused.", index)
        shard = index.parent / name
        if not shard.is_file():
            raise CorruptCheckpointError(
                f"{index}: lists shard '{name}', which is missing (incomplete download?).", index
            )
        sources.files.append(shard)
    sources.weight_map, sources.index = weight_map, index
    return sources


# ----------------------------------------------------------------------------------------------
# Detection


def inspect_checkpoint(
    path: str | Path, component: str | None = None, expected_config: Ideogram4Config | None = None
) -> CheckpointInfo:
    """Detect layout, naming, prefix, quantisation and config, and check every tensor's shape.

    Raises a `CheckpointError` subclass naming the file and the problem. `component` picks
    "transformer" (default) or "unconditional_transformer" in a pipeline folder; with
    `expected_config` a file of another size (e.g. a different layer count) is refused."""
    sources = resolve_files(path, component)
    files = sources.files
    headers = [read_header(f) for f in files]
    tensors: dict[str, tuple[int, TensorInfo]] = {}
    for i, h in enumerate(headers):
        for name, t in h.tensors.items():
            if name in tensors:
                raise CorruptCheckpointError(
                    f"{h.path}: tensor {name!r} also appears in {files[tensors[name][0]].name}.", h.path
                )
            tensors[name] = (i, t)
    if sources.weight_map is not None:
        _check_index(sources, tensors)
    info = CheckpointInfo(
        Path(path), sources.layout, sources.component, files, sources.index is not None, headers, tensors
    )
    _detect_prefix(info)
    keys = {k[len(info.prefix):]: k for k in tensors if k.startswith(info.prefix)}
    info.ignored_keys = sorted(k for k in tensors if not k.startswith(info.prefix) and not k.endswith("scaled_fp8"))
    info.naming = _detect_naming(info, keys)
    if info.layout == "pipeline_folder":
        info.layout = f"{'diffusers' if info.naming == 'diffusers' else 'official'}_folder"
    info.config = _infer_config(info, keys)
    _check_against_model(info, keys)
    if expected_config is not None and expected_config != info.config:
        diffs = [
            f"{f}: file has {getattr(info.config, f)}, expected {getattr(expected_config, f)}"
            for f in info.config.to_dict()
            if getattr(info.config, f) != getattr(expected_config, f)
        ]
        raise CheckpointMismatchError(
            f"{info.files[0]}: an Ideogram 4 transformer of a different size:\n  " + "\n  ".join(diffs),
            info.files[0],
            diffs,
        )
    return info


def _check_index(sources: Sources, tensors: dict[str, tuple[int, TensorInfo]]) -> None:
    files, weight_map = sources.files, sources.weight_map
    wrong = [k for k, shard in weight_map.items() if k not in tensors or files[tensors[k][0]].name != shard]
    extra = [k for k in tensors if k not in weight_map]
    if wrong or extra:
        what = f"{len(wrong)} keys not where the index says (e.g. {wrong[0]!r})" if wrong else ""
        if extra:
            what += ("; " if what else "") + f"{len(extra)} keys missing from the index (e.g. {extra[0]!r})"
        raise CorruptCheckpointError(f"{sources.index}: the index does not match its shards: {what}.", sources.index)


def _detect_prefix(info: CheckpointInfo) -> None:
    hits = [k[: -len(INDICATOR_KEY)] for k in info.tensors if k.endswith(INDICATOR_KEY)]
    hits = [p for p in hits if p == "" or p.endswith(".")]
    if len(hits) == 1:
        info.prefix = hits[0]
        return
    path = info.files[0]
    if len(hits) > 1:
        raise CheckpointMismatchError(
            f"{path}: holds more than one Ideogram 4 transformer (prefixes {hits}); give one model per file.",
            path, hits
        )
    what, example = describe_foreign(list(info.tensors))
    raise NotIdeogram4Error(
        f"{path}: this is not an Ideogram 4 diffusion model; it looks like {what}"
        + (f" (it has '{example}')" if example else "")
        + ". Expected an Ideogram 4 transformer, with keys such as 'embed_image_indicator.weight' and "
        "'layers.0.attention.qkv.weight' (or diffusers' 'layers.0.attention.to_q.weight'), optionally "
        "prefixed with 'model.diffusion_model.' or 'model.'.",
        path,
    )


def describe_foreign(keys: list[str]) -> tuple[str, str | None]:
    """(what the file looks like, an example key) for a file that is not an Ideogram 4 DiT."""
    if not keys:
        return "an empty file (no tensors)", None
    for fragment, what in FOREIGN_MODELS:
        example = next((k for k in keys if fragment in k), None)
        if example is not None:
            if what.startswith("a VAE") and any(k.endswith("bn.running_mean") for k in keys):
                what = "a Flux.2 VAE (load it with a VAE loader)"
            return what, example
    return f"an unknown model ({len(keys)} tensors, e.g. {keys[0]!r})", None


def _detect_naming(info: CheckpointInfo, keys: dict[str, str]) -> str:
    fused = any(".attention.qkv." in k for k in keys)
    split = any(".attention.to_q." in k for k in keys)
    if fused and split:
        raise CheckpointMismatchError(
            f"{info.files[0]}: mixes original ('attention.qkv') and diffusers ('attention.to_q') key names.",
            info.files[0]
        )
    return "diffusers" if split else "original"


def _infer_config(info: CheckpointInfo, keys: dict[str, str]) -> Ideogram4Config:
    shapes = {k: info.tensors[full][1].shape for k, full in keys.items()}
    hidden = shapes[INDICATOR_KEY][-1]
    w1 = "layers.0.feed_forward.w1.weight"
    if w1 in shapes and w1 + ".absmax" in shapes:  # NF4: packed (out*in/2, 1); in = hidden
        shapes[w1] = (2 * math.prod(shapes[w1]) // hidden, hidden)
    try:
        return Ideogram4Config.from_state_dict(shapes)
    except (ValueError, KeyError, IndexError, ZeroDivisionError) as e:
        raise CheckpointMismatchError(
            f"{info.files[0]}: cannot read the model's size: {e}", info.files[0], [str(e)]
        ) from None


def _stored_bases(name: str, naming: str) -> list[str]:
    """Stored Linear names (without prefix) that make up original Linear `name`."""
    if naming == "diffusers":
        if m := _SPLIT_QKV.match(name):
            return [f"{m[1]}to_{p}" for p in "qkv"]
        if m := _O_PROJ.match(name):
            return [f"{m[1]}to_out.0"]
    return [name]


def _check_against_model(info: CheckpointInfo, keys: dict[str, str]) -> None:
    """Classify every Linear and check every tensor against the model built from the config."""
    with torch.device("meta"):
        model = Ideogram4Transformer(info.config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    linear_names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    quant_layers = _header_quant_layers(info)
    problems: list[str] = []
    used: set[str] = set()
    with ExitStack() as stack:
        readers: dict[int, TensorReader] = {}

        def blob(full_key: str) -> dict:
            i = info.tensors[full_key][0]
            if i not in readers:
                readers[i] = stack.enter_context(TensorReader(info.headers[i]))
            return readers[i].read_json_blob(full_key)

        for name in linear_names:
            out_f, in_f = expected[f"{name}.weight"]
            bases = _stored_bases(name, info.naming)
            parts = []
            for base in bases:
                rows = out_f // len(bases)
                part = _classify_linear(info, keys, base, rows, in_f, quant_layers, blob, problems, used)
                if part is not None:
                    parts.append(part)
            if f"{name}.bias" in expected:
                _check_plain(keys, info, f"{bases[0]}.bias", expected[f"{name}.bias"], problems, used)
            if len(parts) == len(bases):
                info.linears[name] = parts
    for key, shape in expected.items():
        module = key.rsplit(".", 1)[0]
        if module not in info.linears and module not in linear_names:
            _check_plain(keys, info, key, shape, problems, used)
    extra = sorted(k for k in keys if k not in used and not k.endswith(("scaled_fp8", ".input_scale", ".scale_input")))
    problems += [f"unexpected tensor '{k}' {list(info.tensors[keys[k]][1].shape)}" for k in extra]
    for full, (_, t) in info.tensors.items():
        if full.startswith(info.prefix) and t.dtype in FLOAT_DTYPES and not full.endswith(("_scale", "scale_weight")):
            info.dtypes[t.dtype] = info.dtypes.get(t.dtype, 0) + 1
    if problems:
        c = info.config
        shown = "\n  ".join(problems[:25]) + (f"\n  ... and {len(problems) - 25} more" if len(problems) > 25 else "")
        raise CheckpointMismatchError(
            f"{info.files[0]}: does not match the Ideogram 4 architecture it claims "
            f"({c.num_layers} layers, hidden {c.hidden_size}, head dim {c.head_dim}):\n  {shown}",
            info.files[0],
            problems,
        )


def _check_plain(keys, info, key, shape, problems, used) -> None:
    if key not in keys:
        problems.append(f"missing tensor '{key}' {list(shape)}")
        return
    used.add(key)
    t = info.tensors[keys[key]][1]
    if t.shape != shape:
        problems.append(f"'{key}' has shape {list(t.shape)}, expected {list(shape)}")
    elif t.dtype not in FLOAT_DTYPES:
        problems.append(f"'{key}' is stored as {t.dtype}, expected a float dtype")


def _header_quant_layers(info: CheckpointInfo) -> dict[str, dict]:
    """Comfy's `_quantization_metadata` header entry: {"layers": {name: {"format": ...}}}, names
    normalised to no prefix."""
    layers: dict[str, dict] = {}
    for h in info.headers:
        raw = h.metadata.get("_quantization_metadata")
        if raw is None:
            continue
        try:
            entries = json.loads(raw)["layers"]
            assert isinstance(entries, dict) and all(isinstance(v, dict) for v in entries.values())
        except (ValueError, KeyError, TypeError, AssertionError, RecursionError):
            raise CorruptCheckpointError(
                f"{h.path}: the '_quantization_metadata' header entry is malformed.", h.path
            ) from None
        for name, entry in entries.items():
            layers[name[len(info.prefix):] if name.startswith(info.prefix) else name] = entry
    return layers


def _classify_linear(info, keys, base, out_f, in_f, quant_layers, blob, problems, used) -> StoredLinear | None:
    wkey = f"{base}.weight"
    if wkey not in keys:
        problems.append(f"missing tensor '{wkey}' {[out_f, in_f]}")
        return None
    w = info.tensors[keys[wkey]][1]
    used.add(wkey)
    path = info.files[info.tensors[keys[wkey]][0]]
    if any(f"{wkey}.quant_state.bitsandbytes__{t}" in keys for t in ("fp4",)):
        raise UnsupportedQuantizationError(f"{path}: '{base}' is bitsandbytes FP4; only NF4 is supported.", path)
    if wkey + NF4_STATE in keys:
        return _classify_nf4(info, keys, base, w, out_f, in_f, problems, used)
    comfy = quant_layers.get(base)
    if f"{base}.comfy_quant" in keys:
        used.add(f"{base}.comfy_quant")
        comfy = blob(keys[f"{base}.comfy_quant"])
    variant = "comfy_quant" if f"{base}.comfy_quant" in keys else "_quantization_metadata" if comfy else ""
    if comfy is not None:
        fmt = comfy.get("format")
        if fmt not in COMFY_FP8_FORMATS:
            raise UnsupportedQuantizationError(
                f"{path}: layer '{base}' uses ComfyUI quantisation format {fmt!r}; this pack runs "
                f"{sorted(COMFY_FP8_FORMATS)}, NF4 and plain weights.",
                path,
            )
    fp8 = FP8_DTYPES.get(w.dtype) or (comfy["format"] if comfy and w.dtype == "U8" else None)
    scale_key = next((s for s in (f"{base}.weight_scale", f"{base}.scale_weight") if s in keys), None)
    if scale_key:
        used.add(scale_key)
    if fp8 is None:
        if w.dtype not in FLOAT_DTYPES:
            problems.append(f"'{wkey}' is stored as {w.dtype}, which is neither float, FP8 nor NF4")
        elif scale_key or comfy:
            problems.append(f"'{wkey}' is a float weight but carries quantisation data ({scale_key or 'comfy format'})")
        elif w.shape != (out_f, in_f):
            problems.append(f"'{wkey}' has shape {list(w.shape)}, expected {[out_f, in_f]}")
        return StoredLinear(base, "plain", out_f, in_f)
    if w.shape != (out_f, in_f):
        problems.append(f"'{wkey}' has shape {list(w.shape)}, expected {[out_f, in_f]}")
    per = None
    if scale_key:
        n = info.tensors[keys[scale_key]][1].numel
        per = "row" if n == out_f and n != 1 else "tensor" if n == 1 else None
        if per is None:
            problems.append(f"'{scale_key}' has {n} values; expected 1 (per tensor) or {out_f} (per row)")
        if scale_key.endswith("scale_weight"):
            variant = "legacy scaled_fp8"
    variant = variant or ("official" if per == "row" else "per-tensor")
    full = bool(comfy and comfy.get("full_precision_matrix_mult"))
    return StoredLinear(base, "fp8", out_f, in_f, fp8, scale_key, per or "tensor", variant, full)


def _classify_nf4(info, keys, base, w, out_f, in_f, problems, used) -> StoredLinear | None:
    wkey = f"{base}.weight"
    aux = {s: f"{wkey}{s}" for s in BNB_SUFFIXES if f"{wkey}{s}" in keys}
    used.update(aux.values())
    missing = [s for s in (".absmax", ".quant_map") if s not in aux]
    nested = ".nested_absmax" in aux
    if nested and ".nested_quant_map" not in aux:
        missing.append(".nested_quant_map")
    if missing:
        problems.append(f"'{wkey}' is NF4 but lacks {', '.join(wkey + m for m in missing)}")
        return None
    if w.dtype != "U8" or w.numel * 2 != out_f * in_f:
        problems.append(f"'{wkey}' packs {w.numel * 2} NF4 values as {w.dtype}, expected {out_f}x{in_f} in U8")
        return None
    n_blocks = info.tensors[keys[aux[".absmax"]]][1].numel
    blocksize = (out_f * in_f) // n_blocks if n_blocks else 0
    if blocksize not in (32, 64, 128, 256, 512, 1024, 2048, 4096) or math.ceil(out_f * in_f / blocksize) != n_blocks:
        problems.append(f"'{wkey}.absmax' has {n_blocks} blocks, which fits no bitsandbytes blocksize")
        return None
    return StoredLinear(base, "nf4", out_f, in_f, variant="bitsandbytes", nf4_blocksize=blocksize, nf4_nested=nested)
