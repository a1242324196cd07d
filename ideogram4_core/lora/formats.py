"""LoRA file formats, recognised from the keys alone, converted into one table
{our original weight key: LoraWeights} (layers.py).

A key is  <prefix><module><pair suffix>:
- prefix: `transformer.` (diffusers/peft), `diffusion_model.` (ai-toolkit, ComfyUI),
  `conditional_transformer.`, `base_model.model.` (a saved peft model), `model.diffusion_model.`,
  or none; or kohya's underscore form `lora_unet_<module with _ for .>` (also `lora_transformer_`);
- module: our original names (fused `attention.qkv`, `attention.o`, `feed_forward.w1/w2/w3`,
  `adaln_modulation`, and the top-level linears) or diffusers' (`attention.to_q/to_k/to_v`,
  `attention.to_out.0`; split q/k/v is also what OneTrainer writes, and native ComfyUI cannot
  apply it to a fused qkv);
- pair suffix: `.lora_A.weight`/`.lora_B.weight` (peft, also with `.default`), `.lora_down.weight`/
  `.lora_up.weight` (kohya, LyCORIS LoCon), `.lora.down.weight`/`.lora.up.weight`, plus an optional
  `.alpha` scalar.

Scale (layers.py): alpha / rank with the stored `.alpha`; for peft files without it, peft's
`lora_adapter_metadata` (lora_alpha, alpha_pattern, use_rslora) when present, else 1, as diffusers
does. Split q/k/v updates become one update of the fused qkv: stacked rows when the three share
their down matrix and scale (diffusers' own split of a fused LoRA), otherwise block-diagonal
(down = [down_q; down_k; down_v], up = diag(up_q, up_k, up_v)), which is exact. Facts checked
against diffusers 0.42.1 `_convert_non_diffusers_ideogram4_lora_to_diffusers` (tests/test_lora_core.py).
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from typing import Mapping

import torch

from .errors import LoraShapeError, NotIdeogram4LoraError, UnsupportedLoraError
from .layers import LoraWeights

PAIR_SUFFIXES = (
    (".lora_A.default.weight", "down", "lora_A/lora_B"), (".lora_B.default.weight", "up", "lora_A/lora_B"),
    (".lora_A.weight", "down", "lora_A/lora_B"), (".lora_B.weight", "up", "lora_A/lora_B"),
    (".lora_down.weight", "down", "lora_down/lora_up"), (".lora_up.weight", "up", "lora_down/lora_up"),
    (".lora.down.weight", "down", "lora.down/lora.up"), (".lora.up.weight", "up", "lora.down/lora.up"),
    (".alpha", "alpha", None),
)
DOTTED_PREFIXES = ("base_model.model.", "model.diffusion_model.", "diffusion_model.", "conditional_transformer.",
                   "transformer.")
UNDERSCORE_PREFIXES = ("lora_unet_", "lora_transformer_")
# Parts of keys that mark adapters other than plain LoRA, and what they are.
UNSUPPORTED = (
    ("hada_", "LoHa (LyCORIS Hadamard-product adapter)"),
    ("lokr_", "LoKr (LyCORIS Kronecker-product adapter)"),
    ("dora_scale", "DoRA (weight-decomposed LoRA)"),
    ("lora_magnitude_vector", "DoRA (weight-decomposed LoRA)"),
    ("oft_", "OFT (orthogonal fine-tuning)"),
    ("lora_mid", "LoCon with a Tucker mid weight (a convolution adapter)"),
    (".diff_b", "a full bias difference"),
    (".diff", "a full weight difference"),
    (".a1.weight", "GLoRA"),
    (".w_norm", "a norm-weight patch"),
    (".b_norm", "a norm-bias patch"),
)
SUPPORTED_KINDS = "plain LoRA (lora_A/lora_B, lora_down/lora_up with optional .alpha)"
_QKV = re.compile(r"^(layers\.\d+\.attention\.)qkv\.weight$")
_O = re.compile(r"^(layers\.\d+\.attention\.)o\.weight$")
_LAYER = re.compile(r"^layers\.(\d+)\.")


def convert_state_dict(
    state: Mapping[str, torch.Tensor],
    shapes: Mapping[str, tuple[int, int]],
    metadata: Mapping[str, str] | None = None,
    source: str = "the LoRA",
) -> tuple[dict[str, LoraWeights], str]:
    """(table, format description) for a LoRA state dict, checked against `shapes` ({our original
    weight key: (out, in)}, layers.linear_shapes). Raises UnsupportedLoraError, NotIdeogram4LoraError
    or LoraShapeError naming `source`."""
    _refuse_unsupported(state, metadata, source)
    targets = _target_names(shapes)
    groups: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    seen = {"prefix": set(), "pairs": set()}
    unknown, not_lora, beyond = [], [], []
    for key, tensor in state.items():
        split = _split_key(key)
        if split is None:
            not_lora.append(key)
            continue
        prefix, module, role, pairs = split
        resolved = targets.get(module)
        if resolved is None:
            if _other_layer_count(module, targets):
                beyond.append(prefix + module)
            else:
                unknown.append(prefix + module)
            continue
        seen["prefix"].add(prefix or "(none)")
        if pairs:
            seen["pairs"].add(pairs)
        groups[module][role] = tensor
    if not_lora:
        raise NotIdeogram4LoraError(_not_lora_message(source, not_lora, len(state)))
    if unknown or not (groups or beyond):
        raise NotIdeogram4LoraError(_unknown_modules_message(source, unknown, shapes, len(state)))

    alphas = _metadata_alphas(metadata)
    layers, parts, problems = {}, defaultdict(dict), []
    if beyond:
        problems.append(f"it patches layers this model does not have ({_module_summary(sorted(set(beyond)))[:300]})")
    for module, tensors in sorted(groups.items()):
        target, part = targets[module]
        weights = _pair(module, tensors, alphas, problems)
        if weights is None:
            continue
        out, inp = shapes[target]
        if part is not None:
            out //= 3
        if weights.shape != (out, inp):
            problems.append(f"{module}: the LoRA updates a ({weights.shape[0]}, {weights.shape[1]}) weight; "
                            f"this model's is ({out}, {inp})")
            continue
        if part is None:
            if target in layers or target in parts:
                problems.append(f"{target}: targeted twice (fused and split names, or two prefixes)")
            layers[target] = weights
        else:
            if target in layers or part in parts[target]:
                problems.append(f"{target}: targeted twice (fused and split names, or two prefixes)")
            parts[target][part] = weights
    if problems:
        raise LoraShapeError(_shape_message(source, problems, shapes), mismatches=problems)
    for target, split_parts in parts.items():
        layers[target] = fuse_qkv(split_parts, shapes[target][0])
    return layers, _describe(seen, groups, targets, layers)


def fuse_qkv(parts: Mapping[int, LoraWeights], rows: int) -> LoraWeights:
    """One update of the fused qkv (rows = 3 x hidden) from updates of its q (0), k (1), v (2) rows.
    Missing parts update nothing. Exact: stacked when the parts share down and scale, else
    block-diagonal (each part's own scale folded into its rows of up when the scales differ)."""
    part_rows = rows // 3
    present = [parts[i] for i in sorted(parts)]
    scales = {p.scale for p in present}
    dtype = present[0].up.dtype
    for p in present:
        dtype = torch.promote_types(dtype, torch.promote_types(p.up.dtype, p.down.dtype))
    first = present[0]
    if len(parts) == 3 and len(scales) == 1 and all(
        p.down.shape == first.down.shape and torch.equal(p.down, first.down) for p in present
    ):
        up = torch.cat([parts[i].up.to(dtype) for i in range(3)])
        return LoraWeights(up, first.down.to(dtype), first.alpha)
    rank = sum(p.rank for p in present)
    down = torch.cat([p.down.to(dtype) for p in present])
    fold = len(scales) > 1
    up = torch.zeros(rows, rank, dtype=torch.float32 if fold else dtype)
    column = 0
    for i in sorted(parts):
        p = parts[i]
        block = p.up.to(up.dtype) * p.scale if fold else p.up
        up[i * part_rows : (i + 1) * part_rows, column : column + p.rank] = block
        column += p.rank
    scale = scales.pop() if not fold else 1.0
    return LoraWeights(up, down, None if scale == 1.0 else scale * rank)


def _refuse_unsupported(state, metadata, source) -> None:
    for key in state:
        for marker, kind in UNSUPPORTED:
            if marker in key and not (marker == ".diff" and not key.endswith(".diff")):
                raise UnsupportedLoraError(
                    f"{source} is {kind} (key {key!r}), which this pack does not apply; it applies "
                    f"{SUPPORTED_KINDS}. Convert or re-export the file as a plain LoRA.")
    config = _adapter_config(metadata)
    if config.get("use_dora"):
        raise UnsupportedLoraError(f"{source} is DoRA (its peft metadata says use_dora), which this pack does not "
                                   f"apply; it applies {SUPPORTED_KINDS}.")


def _split_key(key: str):
    """(prefix, dotted module name, role, pair style) or None when the key is no LoRA tensor."""
    for suffix, role, pairs in PAIR_SUFFIXES:
        if key.endswith(suffix):
            name = key[: -len(suffix)]
            break
    else:
        return None
    for prefix in UNDERSCORE_PREFIXES:
        if name.startswith(prefix):
            return prefix, name[len(prefix):], role, pairs
    prefix = ""
    changed = True
    while changed:  # e.g. base_model.model.transformer.layers...
        changed = False
        for p in DOTTED_PREFIXES:
            if name.startswith(p):
                prefix, name, changed = prefix + p, name[len(p):], True
    return prefix, name, role, pairs


def _target_names(shapes: Mapping[str, tuple[int, int]]) -> dict[str, tuple[str, int | None]]:
    """Every module name a file may use (original, diffusers, and kohya's underscore forms of both)
    -> (our weight key, part of a fused qkv or None)."""
    names: dict[str, tuple[str, int | None]] = {}
    for key in shapes:
        module = key.removesuffix(".weight")
        names[module] = (key, None)
        if m := _QKV.match(key):
            for i, part in enumerate("qkv"):
                names[f"{m[1]}to_{part}"] = (key, i)
        elif m := _O.match(key):
            names[f"{m[1]}to_out.0"] = (key, None)
    names.update({name.replace(".", "_"): target for name, target in list(names.items())})
    return names


def _other_layer_count(module: str, targets) -> bool:
    """Whether `module` is one of our per-layer modules in a layer this model does not have."""
    return bool(re.match(r"^layers[._]\d+[._]", module)) and re.sub(r"^layers([._])\d+([._])", r"layers\g<1>0\g<2>", module) in targets


def _pair(module: str, tensors: dict, alphas, problems: list[str]) -> LoraWeights | None:
    if "down" not in tensors or "up" not in tensors:
        have = "down (lora_A / lora_down)" if "down" in tensors else "up (lora_B / lora_up)" if "up" in tensors else "only an alpha"
        problems.append(f"{module}: has {have} but not its partner")
        return None
    down, up = tensors["down"], tensors["up"]
    if down.ndim != 2 or up.ndim != 2:
        problems.append(f"{module}: down {tuple(down.shape)} and up {tuple(up.shape)} are not matrices "
                        "(a convolution LoRA?); Ideogram 4 has linear layers only")
        return None
    if up.shape[1] != down.shape[0]:
        problems.append(f"{module}: rank mismatch: down has {down.shape[0]} rows, up {up.shape[1]} columns")
        return None
    if not (down.is_floating_point() and up.is_floating_point()):
        problems.append(f"{module}: tensors of dtype {down.dtype} / {up.dtype}; a LoRA stores float tensors")
        return None
    alpha = None
    if "alpha" in tensors:
        a = tensors["alpha"]
        if a.numel() != 1 or not math.isfinite(float(a.float().reshape(()))):
            problems.append(f"{module}: alpha should be one finite number, found {a.dtype}{list(a.shape)}")
            return None
        alpha = float(a.float().reshape(()))
    else:
        alpha = alphas(module, down.shape[0])
    return LoraWeights(up, down, alpha)


def _adapter_config(metadata) -> dict:
    """peft's LoraConfig as diffusers stores it (`lora_adapter_metadata`, keys maybe prefixed with
    `transformer.`), or {}."""
    raw = (metadata or {}).get("lora_adapter_metadata")
    if not raw:
        return {}
    try:
        config = json.loads(raw)
    except ValueError:
        return {}
    if not isinstance(config, dict):
        return {}
    return {k.removeprefix("transformer."): v for k, v in config.items()}


def _metadata_alphas(metadata):
    """module, rank -> alpha from peft's metadata (alpha_pattern, lora_alpha; rsLoRA scales by
    alpha / sqrt(rank)), or None where it says nothing (scale 1)."""
    config = _adapter_config(metadata)
    patterns = config.get("alpha_pattern") or {}
    default = config.get("lora_alpha")
    rslora = bool(config.get("use_rslora"))

    def alpha(module: str, rank: int):
        value = default
        for pattern, a in patterns.items():  # peft matches a pattern against the module name's end
            if re.match(rf"(.*\.)?({pattern})$", module):
                value = a
                break
        if value is None:
            return None
        return float(value) * math.sqrt(rank) if rslora else float(value)  # scale = alpha' / rank

    return alpha


def _describe(seen, groups, targets, layers) -> str:
    prefixes = sorted(seen["prefix"])
    pairs = "/".join(sorted(seen["pairs"]))
    split = any(targets[m][1] is not None for m in groups)
    has_alpha = any("alpha" in t for t in groups.values())
    underscore = any(p in UNDERSCORE_PREFIXES for p in prefixes)
    if underscore or pairs == "lora_down/lora_up":
        kind = "kohya"
    elif "diffusion_model." in prefixes or "conditional_transformer." in prefixes:
        kind = "ai-toolkit"
    else:
        kind = "diffusers/peft"
    if split:
        kind += " with split q/k/v (OneTrainer style)"
    ranks = sorted({w.rank for w in layers.values()})
    return (f"{kind}: prefix {', '.join(prefixes)}, {pairs}{', alpha' if has_alpha else ''}, "
            f"{len(layers)} layers, rank {ranks[0] if len(ranks) == 1 else f'{ranks[0]}-{ranks[-1]}'}")


def _module_summary(names) -> str:
    """Module names with the layer numbers folded: `layers.{0-33}.attention.qkv`."""
    folded = defaultdict(set)
    for name in names:
        m = _LAYER.match(name)
        if m:
            folded["layers.{N}." + name[m.end():]].add(int(m[1]))
        else:
            folded[name].add(-1)
    parts = []
    for pattern, ids in sorted(folded.items()):
        ids.discard(-1)
        parts.append(pattern.replace("{N}", "{%d-%d}" % (min(ids), max(ids))) if ids else pattern)
    return ", ".join(parts)


def _not_lora_message(source, keys, total) -> str:
    looks_like_model = sum(k.endswith(".weight") or k.endswith(".bias") for k in keys) > total / 2
    hint = (" It looks like a model checkpoint, not a LoRA: load it with the model loader instead."
            if looks_like_model else "")
    return (f"{source} is not a LoRA this pack can read: {len(keys)} of its {total} keys are not LoRA tensors "
            f"(e.g. {', '.join(repr(k) for k in keys[:3])}); a LoRA key ends in .lora_A.weight/.lora_B.weight, "
            f".lora_down.weight/.lora_up.weight or .alpha.{hint}")


def _unknown_modules_message(source, unknown, shapes, total) -> str:
    ours = _module_summary(k.removesuffix(".weight") for k in shapes)
    if not unknown:
        return f"{source} holds no LoRA tensors ({total} keys)."
    theirs = _module_summary(sorted(set(unknown)))
    return (f"{source} is not an Ideogram 4 LoRA: it targets modules {theirs[:600]}, which an Ideogram 4 "
            f"transformer does not have. Ideogram 4 LoRAs target {ours} (original names; diffusers' "
            "to_q/to_k/to_v/to_out.0 are accepted too).")


def _shape_message(source, problems, shapes) -> str:
    hidden = shapes.get("layers.0.attention.o.weight", (None,))[0]
    layers = len({k.split(".")[1] for k in shapes if k.startswith("layers.")})
    listed = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
    return (f"{source} does not fit this model ({layers} layers, hidden size {hidden}): {listed}. "
            "Is it a LoRA for another model size, or a damaged file?")
