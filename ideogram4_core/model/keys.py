"""Key names of the DiT: original (`attention.qkv`, `attention.o`) <-> diffusers (`to_q/to_k/to_v`,
`to_out.0`). Every other key is identical in both (spec §F.1)."""

from __future__ import annotations

import re
from typing import Mapping

import torch

_QKV = re.compile(r"^(layers\.\d+\.attention\.)qkv\.(weight|weight_scale)$")
_SPLIT = re.compile(r"^(layers\.\d+\.attention\.)to_([qkv])\.(weight|weight_scale)$")
_O_ORIGINAL = re.compile(r"^(layers\.\d+\.attention\.)o\.")
_O_DIFFUSERS = re.compile(r"^(layers\.\d+\.attention\.)to_out\.0\.")


def is_diffusers_naming(keys) -> bool:
    return any(_SPLIT.match(k) for k in keys)


def original_to_diffusers(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Split fused QKV rows [Q; K; V] into three equal parts and rename `o` to `to_out.0`."""
    out = {}
    for key, value in state_dict.items():
        if m := _QKV.match(key):
            for name, part in zip("qkv", value.chunk(3, dim=0)):
                out[f"{m[1]}to_{name}.{m[2]}"] = part
        else:
            out[_O_ORIGINAL.sub(r"\1to_out.0.", key)] = value
    return out


def diffusers_to_original(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Concatenate to_q/to_k/to_v (in that order) into `qkv` and rename `to_out.0` to `o`."""
    out, parts = {}, {}
    for key, value in state_dict.items():
        if m := _SPLIT.match(key):
            parts.setdefault((m[1], m[3]), {})[m[2]] = value
        else:
            out[_O_DIFFUSERS.sub(r"\1o.", key)] = value
    for (prefix, suffix), qkv in parts.items():
        if set(qkv) != {"q", "k", "v"}:
            raise ValueError(f"{prefix}: found only to_{', to_'.join(sorted(qkv))}; need to_q, to_k and to_v")
        out[f"{prefix}qkv.{suffix}"] = torch.cat([qkv["q"], qkv["k"], qkv["v"]], dim=0)
    return out
