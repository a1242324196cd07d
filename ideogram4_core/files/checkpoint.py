"""Load an Ideogram 4 transformer from any published layout (DESIGN §4), streamed.

    info = inspect_checkpoint(path)            # header-only detection; info.summary() for people
    model = load_transformer(path, quantization="as_stored", compute_dtype=torch.bfloat16)
    cond, uncond = load_transformer_pair(pipeline_folder)      # or (cond_file, uncond_file)

Streaming: the model is built on the meta device and materialised one module at a time; each
module's tensors are read from the file (positioned reads, see safetensors_io), converted, moved to
`device` and only then is the next module read. Peak host memory is what the finished model holds
on the host plus one module in flight.

Storage after loading:
- NF4 files -> bitsandbytes `Linear4bit` (blocksize and nesting from the stored state);
- FP8 files -> `quant.FP8Linear` with float8 weights and their scales (per row (out, 1) or per
  tensor ()); each layer is dequantised when it runs, or uses an FP8 matmul on sm89+ GPUs;
- plain files -> `nn.Linear` in `compute_dtype`, or quantised while loading when
  `quantization="nf4"` / `"fp8"`: then the per-block linears and `llm_cond_proj` (99.5 % of the
  weights) are quantised, and the small precision-sensitive input, timestep, AdaLN-projection and
  final layers stay in `compute_dtype` (diffusers keeps the same modules out of low-precision
  storage, spec §H.1).
Norms, biases and the indicator embedding are always kept in `compute_dtype`.

The same-file warning for a conditional/unconditional pair is emitted with `warnings.warn`
(category `SameCheckpointWarning`); `same_checkpoint_warning()` returns its text for a node.
"""

from __future__ import annotations

import os
import warnings
from contextlib import ExitStack
from pathlib import Path

import torch
from torch import nn

from .checkpoint_detect import CheckpointInfo, StoredLinear, inspect_checkpoint
from .errors import (
    CheckpointError,
    CheckpointMismatchError,
    CorruptCheckpointError,
    SameCheckpointWarning,
)
from ..memory import release_freed_heap
from ..model.transformer import Ideogram4Config, Ideogram4Transformer
from ..model.quant import ConcatLinear, FP8Linear, nf4_linear_from_float, nf4_linear_from_packed, quantize_fp8_per_row
from .safetensors_io import TensorReader

QUANTIZATIONS = ("as_stored", "nf4", "fp8")
NF4_DTYPES = {"bfloat16", "float16", "float32"}

__all__ = [
    "CheckpointInfo",
    "inspect_checkpoint",
    "load_transformer",
    "load_transformer_pair",
    "same_checkpoint_warning",
]


def load_transformer(
    path: str | Path | CheckpointInfo,
    *,
    quantization: str = "as_stored",
    compute_dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    component: str | None = None,
    expected_config: Ideogram4Config | None = None,
) -> Ideogram4Transformer:
    """Load one transformer (a file, a component folder, or `component` of a pipeline folder).

    quantization: "as_stored" keeps the file's format; "nf4" / "fp8" quantise a plain file while
    loading (a file that is already quantised is only accepted in its own format).
    compute_dtype: bfloat16 (reference) or float32. Returns the model in eval mode on `device`.
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, not {quantization!r}")
    if compute_dtype not in (torch.bfloat16, torch.float32):
        raise ValueError(f"compute_dtype must be torch.bfloat16 or torch.float32, not {compute_dtype}")
    info = path if isinstance(path, CheckpointInfo) else inspect_checkpoint(path, component, expected_config)
    stored = info.quantization
    if quantization != "as_stored" and stored not in ("none", quantization):
        raise CheckpointError(
            f"{info.files[0]}: is already quantised ({info.quantization_label()}); load it with "
            f"quantization='as_stored'. Re-quantising to {quantization} would add a second rounding error.",
            info.files[0],
        )
    device = torch.device(device)
    with torch.device("meta"):
        model = Ideogram4Transformer(info.config)
    model.set_compute_dtype(compute_dtype)
    loader = _ModuleLoader(info, quantization, compute_dtype, device)
    # Converting (quantising, casting, moving to a GPU) frees each read buffer and temporaries.
    converting = quantization != "as_stored" or device.type != "cpu" or any(
        getattr(torch, {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}[d]) != compute_dtype for d in info.dtypes
    )
    with ExitStack() as stack:
        loader.readers = [stack.enter_context(TensorReader(h)) for h in info.headers]
        for name, module in _modules_in_file_order(model, info):
            if name in info.linears:
                parent, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent), child, loader.linear(name))
            else:
                loader.plain_module(name, module)
            if converting:
                release_freed_heap()
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:  # detection checked every key, so this would be a bug here, not a bad file
        raise RuntimeError(f"internal error: parameters never loaded: {left[:5]}")
    return model.eval().requires_grad_(False)


def load_transformer_pair(
    cond: str | Path,
    uncond: str | Path | None = None,
    **kwargs,
) -> tuple[Ideogram4Transformer, Ideogram4Transformer]:
    """(conditional, unconditional). Give a pipeline folder holding `transformer/` and
    `unconditional_transformer/`, or two paths. Any Ideogram 4 transformer fits either role (they
    share the architecture), so a conditional file given as the unconditional one loads; the very
    same file twice loads too but emits `SameCheckpointWarning`. Sizes must agree."""
    if uncond is None:
        cond_info = inspect_checkpoint(cond, "transformer")
        uncond_info = inspect_checkpoint(cond, "unconditional_transformer")
    else:
        cond_info, uncond_info = inspect_checkpoint(cond), inspect_checkpoint(uncond)
    message = same_checkpoint_warning(cond_info, uncond_info)
    if message:
        warnings.warn(message, SameCheckpointWarning, stacklevel=2)
    if cond_info.config != uncond_info.config:
        a, b = cond_info.config, uncond_info.config
        diffs = [
            f"{f}: conditional {getattr(a, f)}, unconditional {getattr(b, f)}"
            for f in a.to_dict()
            if getattr(a, f) != getattr(b, f)
        ]
        raise CheckpointMismatchError(
            f"{uncond_info.files[0]}: the unconditional transformer does not match the conditional one "
            f"({cond_info.files[0]}):\n  " + "\n  ".join(diffs),
            uncond_info.files[0],
            diffs,
        )
    return load_transformer(cond_info, **kwargs), load_transformer(uncond_info, **kwargs)


def same_checkpoint_warning(cond: str | Path | CheckpointInfo, uncond: str | Path | CheckpointInfo) -> str | None:
    """The warning text when both roles get the same weights (the same file, or a copy of it),
    else None."""
    a = cond if isinstance(cond, CheckpointInfo) else inspect_checkpoint(cond)
    b = uncond if isinstance(uncond, CheckpointInfo) else inspect_checkpoint(uncond)
    same = len(a.headers) == len(b.headers) and all(
        _same_file(x.path, y.path) or _same_bytes_sampled(x, y) for x, y in zip(a.headers, b.headers)
    )
    if not same:
        return None
    return (
        f"The conditional and the unconditional transformer are the same weights ({a.files[0]} and "
        f"{b.files[0]}). Ideogram 4 uses two different transformers: give the unconditional one "
        "(unconditional_transformer/ or ideogram4_unconditional_*.safetensors) as the negative model, "
        "or guidance will not match the reference."
    )


def _same_bytes_sampled(x, y, chunk: int = 1 << 16) -> bool:
    """A copy of the same file: equal size and header (names, shapes, offsets), and equal bytes at
    the start, middle and end of the data. Two different models of one size share the header, so
    the samples are what tells them apart; reading 3 x 64 KiB keeps this cheap for 9 GB files."""
    if x.file_size != y.file_size or x.header_bytes != y.header_bytes:
        return False
    size = x.file_size - x.data_start
    with open(x.path, "rb") as fx, open(y.path, "rb") as fy:
        for at in {0, max(0, size // 2 - chunk // 2), max(0, size - chunk)}:
            fx.seek(x.data_start + at)
            fy.seek(y.data_start + at)
            if fx.read(chunk) != fy.read(chunk):
                return False
    return True


def _same_file(x: Path, y: Path) -> bool:
    try:
        return os.path.samefile(x, y)
    except OSError:
        return False


def _modules_in_file_order(model: nn.Module, info: CheckpointInfo):
    """Leaf modules that own parameters, ordered by where their first tensor sits in the files, so
    reads move forward through each file."""
    position = {key[len(info.prefix):]: (i, t.begin) for key, (i, t) in info.tensors.items()}
    entries = []
    for name, module in model.named_modules():
        if name in info.linears:
            bases = [p.base for p in info.linears[name]]
            where = min(position[f"{b}.weight"] for b in bases)
        elif name and not any(True for _ in module.children()) and any(True for _ in module.parameters(recurse=False)):
            where = min(position[f"{name}.{p}"] for p, _ in module.named_parameters(recurse=False))
        else:
            continue
        entries.append((where, name, module))
    return [(name, module) for _, name, module in sorted(entries, key=lambda e: e[0])]


def _should_quantize_on_load(name: str) -> bool:
    return name.startswith("layers.") or name == "llm_cond_proj"


class _ModuleLoader:
    def __init__(self, info: CheckpointInfo, quantization: str, compute_dtype: torch.dtype, device: torch.device):
        self.info, self.quantization, self.dtype, self.device = info, quantization, compute_dtype, device
        self.readers: list[TensorReader] = []

    def read(self, key: str) -> torch.Tensor:
        full = self.info.prefix + key
        file_index, _ = self.info.tensors[full]
        return self.readers[file_index].read(full)

    def param(self, key: str) -> nn.Parameter:
        return nn.Parameter(self.read(key).to(self.dtype).to(self.device), requires_grad=False)

    def plain_module(self, name: str, module: nn.Module) -> None:
        for pname, _ in list(module.named_parameters(recurse=False)):
            setattr(module, pname, self.param(f"{name}.{pname}"))

    def linear(self, name: str) -> nn.Module:
        parts = self.info.linears[name]
        bias_key = f"{parts[0].base}.bias"
        has_bias = self.info.prefix + bias_key in self.info.tensors and len(parts) == 1
        bias = self.read(bias_key).to(self.dtype) if has_bias else None
        kind = parts[0].kind
        if any(p.kind != kind for p in parts):
            raise CheckpointError(f"{self.info.files[0]}: the parts of '{name}' are stored in different formats.")
        if kind == "nf4":
            layers = [self._nf4(p, bias) for p in parts]
            return layers[0] if len(layers) == 1 else ConcatLinear(layers)
        if kind == "fp8":
            return self._fp8(parts, bias)
        weights = [self.read(f"{p.base}.weight") for p in parts]
        weight = weights[0] if len(weights) == 1 else torch.cat(weights)  # diffusers q, k, v -> fused rows
        target = self.quantization if _should_quantize_on_load(name) else "as_stored"
        if target == "fp8":
            w8, scale = quantize_fp8_per_row(weight)
            return self._to_device(FP8Linear(w8, scale, bias))
        if target == "nf4":
            return nf4_linear_from_float(weight, bias, self.dtype, self.device)
        with torch.device("meta"):
            layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        layer.weight = nn.Parameter(weight.to(self.dtype).to(self.device), requires_grad=False)
        if bias is not None:
            layer.bias = nn.Parameter(bias.to(self.device), requires_grad=False)
        return layer

    def _to_device(self, layer: nn.Module) -> nn.Module:
        return layer.to(self.device)

    def _fp8(self, parts: list[StoredLinear], bias: torch.Tensor | None) -> FP8Linear:
        fp8_dtype = getattr(torch, parts[0].fp8_dtype)
        weights, scales = [], []
        for p in parts:
            weights.append(self.read(f"{p.base}.weight").view(fp8_dtype))  # uint8 storage is re-viewed
            scale = self.read(p.scale_key) if p.scale_key else torch.ones(())  # no scale: a plain cast
            scale = scale.to(torch.float32)
            scales.append(scale.reshape(p.out_features, 1) if p.scale_per == "row" else scale.reshape(()))
        if len(parts) == 1:
            weight, scale = weights[0], scales[0]
        else:  # diffusers' separate to_q/to_k/to_v: one fused layer with per-row scales
            weight = torch.cat(weights)
            scale = torch.cat([s.expand(p.out_features, 1) for s, p in zip(scales, parts)])
        layer = self._to_device(FP8Linear(weight, scale, bias))
        if any(p.full_precision for p in parts):
            layer.matmul = "dequantize"  # the file asks for full-precision matmuls in this layer
        return layer

    def _nf4(self, part: StoredLinear, bias: torch.Tensor | None) -> nn.Module:
        wkey = f"{part.base}.weight"
        state_key = f"{wkey}.quant_state.bitsandbytes__nf4"
        full = self.info.prefix + state_key
        reader = self.readers[self.info.tensors[full][0]]
        state = reader.read_json_blob(full)
        self._check_nf4_state(part, state)
        stats = {
            key[len(self.info.prefix) + len(wkey) + 1:]: self.read(key[len(self.info.prefix):])
            for key in self.info.tensors
            if key.startswith(self.info.prefix + wkey + ".")
        }
        return nf4_linear_from_packed(self.read(wkey), stats, bias, self.dtype, self.device)

    def _check_nf4_state(self, part: StoredLinear, state: dict) -> None:
        """Validate the stored JSON before bitsandbytes interprets it (it would `getattr(torch, dtype)`)."""
        problems = []
        if state.get("quant_type") != "nf4":
            problems.append(f"quant_type {state.get('quant_type')!r}, expected 'nf4'")
        if state.get("blocksize") != part.nf4_blocksize:
            problems.append(f"blocksize {state.get('blocksize')!r}, but absmax implies {part.nf4_blocksize}")
        if state.get("shape") != [part.out_features, part.in_features]:
            problems.append(f"shape {state.get('shape')!r}, expected {[part.out_features, part.in_features]}")
        if state.get("dtype") not in NF4_DTYPES:
            problems.append(f"dtype {state.get('dtype')!r}")
        if part.nf4_nested and (
            state.get("nested_dtype") not in NF4_DTYPES
            or not isinstance(state.get("nested_blocksize"), int)
            or not isinstance(state.get("nested_offset"), (int, float))
        ):
            problems.append("incomplete nested statistics")
        if problems:
            path = self.info.files[self.info.tensors[self.info.prefix + part.base + ".weight"][0]]
            raise CorruptCheckpointError(
                f"{path}: the NF4 state of '{part.base}.weight' is invalid: {'; '.join(problems)}.", path
            )
