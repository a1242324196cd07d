"""The low-rank update of one layer, and where it lands in our model.

A LoRA on a linear layer with weight W (out, in) is  W' = W + strength * (alpha / rank) * up @ down,
up (out, rank), down (rank, in), the convention of peft (scaling = lora_alpha / r), kohya and
ComfyUI alike. Tables are keyed by our original weight keys (`layers.3.attention.qkv.weight`,
`layers.3.feed_forward.w1.weight`, ...; model/keys.py). The diffusers layout's separately stored
to_q / to_k / to_v NF4 parts (quant.ConcatLinear: `layers.3.attention.qkv.parts.1.weight`) get the
matching rows of the fused update (`patch_targets`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import torch
from torch import nn

from ..model import quant


@dataclass(frozen=True)
class LoraWeights:
    """delta W = scale * up @ down, with scale = alpha / rank (alpha None: scale 1, peft's default
    when a file stores no alpha, and diffusers' for its own format)."""

    up: torch.Tensor  # (out, rank)
    down: torch.Tensor  # (rank, in)
    alpha: float | None = None

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def scale(self) -> float:
        return 1.0 if self.alpha is None else self.alpha / self.rank

    @property
    def shape(self) -> tuple[int, int]:
        return self.up.shape[0], self.down.shape[1]

    def delta(self, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
        """scale * up @ down as an (out, in) tensor, computed in `dtype` (fp32 unless asked)."""
        up, down = self.up.to(device=device, dtype=dtype), self.down.to(device=device, dtype=dtype)
        return (up @ down) * self.scale

    def rows(self, start: int, stop: int) -> "LoraWeights":
        """The update of output rows [start, stop): the same down, a slice of up, the same scale."""
        return LoraWeights(self.up[start:stop], self.down, None if self.alpha is None else float(self.alpha))

    @property
    def nbytes(self) -> int:
        return self.up.nbytes + self.down.nbytes


def _linear_modules(model: nn.Module):
    """(name, module) of every linear layer a LoRA may target, in original naming: nn.Linear,
    FP8Linear, bitsandbytes NF4 and ConcatLinear (whose parts are not targets of their own)."""
    concat = [name + "." for name, m in model.named_modules() if isinstance(m, quant.ConcatLinear)]
    for name, module in model.named_modules():
        if any(name.startswith(prefix) for prefix in concat):
            continue
        if isinstance(module, (nn.Linear, quant.FP8Linear, quant.ConcatLinear)) or quant.is_nf4_layer(module):
            yield name, module


def linear_shapes(model: nn.Module) -> dict[str, tuple[int, int]]:
    """{original weight key: (out_features, in_features)} of every LoRA-able layer. Quantised layers
    store packed weights, so their logical shape is read from the layer, not from `weight`."""
    return {f"{name}.weight": (m.out_features, m.in_features) for name, m in _linear_modules(model)}


def patch_targets(model: nn.Module, table: Mapping[str, LoraWeights]) -> dict[str, LoraWeights]:
    """`table` keyed by `model`'s own state-dict keys: a fused-qkv update on a ConcatLinear is split
    into one update per stored part (rows of `up`), which is exact."""
    modules = dict(_linear_modules(model))
    out = {}
    for key, weights in table.items():
        module = modules.get(key.removesuffix(".weight"))
        if module is None:
            raise KeyError(f"{key} is not a linear layer of this model")
        if isinstance(module, quant.ConcatLinear):
            start = 0
            for i, part in enumerate(module.parts):
                out[f"{key.removesuffix('.weight')}.parts.{i}.weight"] = weights.rows(start, start + part.out_features)
                start += part.out_features
        else:
            out[key] = weights
    return out


@torch.no_grad()
def merge_(model: nn.Module, loras: Iterable[tuple[Mapping[str, LoraWeights], float]]) -> nn.Module:
    """Add strength * delta W of each (table, strength) to a float model's weights, in place: the sum
    is formed in fp32 and rounded once to the weight's dtype. For host-free use and tests; FP8 /
    NF4 layers are refused (a host applies those per call to the dequantised weight)."""
    params = dict(model.named_parameters())
    modules = dict(_linear_modules(model))
    totals: dict[str, torch.Tensor] = {}
    for table, strength in loras:
        for key, weights in table.items():
            module = modules[key.removesuffix(".weight")]
            if not isinstance(module, nn.Linear):
                raise TypeError(f"{key}: merge_ works on float nn.Linear weights, not {type(module).__name__}")
            w = params[key]
            total = totals.setdefault(key, w.detach().to(torch.float32, copy=True))
            total += strength * weights.delta(device=w.device)
    for key, total in totals.items():
        params[key].copy_(total.to(params[key].dtype))
    return model
