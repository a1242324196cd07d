"""The Ideogram 4 diffusion transformer (spec §A). One class serves both the conditional and the
unconditional model: they share the architecture and differ only in weights (spec §B).

Conventions (as in the reference):
- tokens are (B, L, 128) patchified latents; the model predicts the velocity v = x0 - noise;
- timestep is model time in [0, 1]: 0 = pure noise, 1 = clean data;
- parameter names are the original ones (`attention.qkv`, `attention.o`); diffusers' split names are
  converted by `keys.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..constants import LLM_TOKEN_INDICATOR, OUTPUT_IMAGE_INDICATOR


@dataclass(frozen=True)
class Ideogram4Config:
    """Architecture hyper-parameters. Defaults are the released 9.3B model's (spec §A.1)."""

    in_channels: int = 128
    num_layers: int = 34
    num_heads: int = 18
    head_dim: int = 256
    intermediate_size: int = 12288
    adaln_dim: int = 512
    llm_features_dim: int = 53248
    rope_theta: float = 5_000_000.0
    mrope_section: tuple[int, int, int] = (24, 20, 20)
    norm_eps: float = 1e-5

    @property
    def hidden_size(self) -> int:
        return self.num_heads * self.head_dim

    @classmethod
    def from_state_dict(cls, shapes: Mapping[str, Sequence[int]]) -> "Ideogram4Config":
        """Infer the config from original-named keys (no prefix) mapped to tensor shapes.

        Values not visible in shapes (rope theta, MRoPE split, eps) keep the released model's.
        Quantised files store packed weights, so only shapes of unquantised tensors are read:
        norms, biases and the indicator embedding are never quantised.
        """
        shapes = {k: tuple(v) for k, v in shapes.items()}
        required = (
            "embed_image_indicator.weight",
            "layers.0.attention.norm_q.weight",
            "input_proj.weight",
            "llm_cond_norm.weight",
            "adaln_proj.bias",
            "layers.0.attention_norm1.weight",
        )
        missing = [k for k in required if k not in shapes]
        if missing:
            raise ValueError(f"cannot infer the Ideogram 4 config: missing {', '.join(missing)}")
        hidden = shapes["embed_image_indicator.weight"][1]
        head_dim = shapes["layers.0.attention.norm_q.weight"][0]
        layer_ids = {int(k.split(".")[1]) for k in shapes if k.startswith("layers.")}
        num_layers = max(layer_ids) + 1
        if layer_ids != set(range(num_layers)):
            absent = sorted(set(range(num_layers)) - layer_ids)
            raise ValueError(f"layer numbering has gaps: layers {absent} are missing")
        ffn = _intermediate_size(shapes, hidden)
        return cls(
            in_channels=_in_channels(shapes),
            num_layers=num_layers,
            num_heads=hidden // head_dim,
            head_dim=head_dim,
            intermediate_size=ffn,
            adaln_dim=shapes["adaln_proj.bias"][0],
            llm_features_dim=shapes["llm_cond_norm.weight"][0],
        )

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _in_channels(shapes: Mapping[str, tuple]) -> int:
    # The output layer's bias is (in,) whatever the weights' quantisation; input_proj.weight is
    # (hidden, in) only when unquantised.
    return shapes.get("final_layer.linear.bias", shapes["input_proj.weight"][-1:])[0]


def _intermediate_size(shapes: Mapping[str, tuple], hidden: int) -> int:
    w1 = shapes.get("layers.0.feed_forward.w1.weight")
    if w1 is not None and len(w1) == 2 and w1[1] == hidden:
        return w1[0]
    return Ideogram4Config.intermediate_size  # packed (quantised) weight: keep the released value


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x * rsqrt(mean(x^2) + eps) * weight, with the statistics in fp32 (the 53248-wide text norm
    overflows bf16 otherwise), rounded once to the weight dtype like the reference.

    F.rms_norm already computes in fp32 for a bf16 input and rounds once to the input dtype, the
    same numbers as upcasting x first (bit-identical on CPU), so a bf16 x goes in as it is: no fp32
    copy of x and of the result, which tripled the memory traffic of every norm (6 per block)."""
    if x.dtype != weight.dtype:
        x = x.float()  # e.g. bf16 activations with fp32 norm weights: keep the fp32 result
    return F.rms_norm(x, (x.shape[-1],), eps=eps).to(weight.dtype).mul_(weight)  # a fresh tensor: in place


def into(fresh: torch.Tensor, op: str, other: torch.Tensor) -> torch.Tensor:
    """`fresh <op> other` ("mul" or "add"), written into `fresh` (a temporary nobody else holds)
    when the result has its dtype and shape: the same numbers without allocating another
    activation-sized buffer."""
    if torch.result_type(fresh, other) == fresh.dtype and torch.broadcast_shapes(fresh.shape, other.shape) == fresh.shape:
        return getattr(fresh, op + "_")(other)
    return getattr(torch, op)(fresh, other)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def mrope_cos_sin(
    position_ids: torch.Tensor, head_dim: int, theta: float, mrope_section: Sequence[int], dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Interleaved 3-axis rotary tables (spec §A.4): (B, L, 3) positions -> cos, sin of (B, L, head_dim).

    Angles are computed in fp32 with autocast off: image positions start at 65536, where bf16 spaces
    integers 512 apart and would collapse the whole image grid onto a few positions.
    """
    with torch.autocast(device_type=position_ids.device.type, enabled=False):
        inv_freq = 1.0 / (
            theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=position_ids.device) / head_dim)
        )
        angles = position_ids.to(torch.float32).unsqueeze(-1) * inv_freq  # (B, L, 3, head_dim/2)
        freqs = angles[..., 0, :].clone()  # t axis by default
        for axis in (1, 2):  # h frequencies at j = 1 mod 3, w at j = 2 mod 3, for j < 3 * section
            idx = torch.arange(axis, 3 * mrope_section[axis], 3, device=position_ids.device)
            freqs[..., idx] = angles[..., axis, idx]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Half-split rotation: rotate_half([a, b]) = [-b, a]. x is (B, L, heads, D); cos/sin (B, L, D)."""
    half = x.shape[-1] // 2
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    # x * cos + rotate_half(x) * sin without building rotate_half(x): negation is exact, so
    # a + (-b) * s rounds like a - b * s and each half gets the same numbers in place.
    out = x * cos
    out[..., :half] -= x[..., half:] * sin[..., :half]
    out[..., half:] += x[..., :half] * sin[..., half:]
    return out


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoid of 1e4 * t, sin half first then cos (spec §A.5); fp32. Note the divisor half - 1."""
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=t.device) * (-math.log(1e4) / (half - 1))
    angles = (1e4 * t.to(torch.float32)).unsqueeze(-1) * torch.exp(exponent)
    return torch.cat((angles.sin(), angles.cos()), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: Ideogram4Config):
        super().__init__()
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size, bias=False)
        self.norm_q = RMSNorm(cfg.head_dim, eps=1e-5)
        self.norm_k = RMSNorm(cfg.head_dim, eps=1e-5)
        self.o = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None,
                rows_from: int = 0):
        """Attention output for rows `rows_from:` of x (all rows by default)."""
        b, length, _ = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.num_heads, self.head_dim).unbind(2)
        cos, sin = rope
        q = apply_rope(self.norm_q(q), cos, sin)
        k = apply_rope(self.norm_k(k), cos, sin)
        # SDPA wants (B, heads, L, D). With mask=None it may pick a flash kernel. It runs the queries
        # of every row even when rows are cut: fewer queries change the CPU kernel's blocking and so
        # the last bits on short sequences, and they are a small share of the work. The cut starts
        # at the output projection (row-wise: each kept row gets the same numbers).
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
        return self.o(out.transpose(1, 2)[:, rows_from:].reshape(b, length - rows_from, -1))


class FeedForward(nn.Module):
    def __init__(self, cfg: Ideogram4Config):
        super().__init__()
        self.w1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.w2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        self.w3 = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(into(F.silu(self.w1(x)), "mul", self.w3(x)))


class Block(nn.Module):
    """Pre- and post-normed attention and SwiGLU, modulated by tanh gates and (1 + scale); no shift."""

    def __init__(self, cfg: Ideogram4Config):
        super().__init__()
        self.attention = Attention(cfg)
        self.feed_forward = FeedForward(cfg)
        self.attention_norm1 = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.attention_norm2 = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.ffn_norm1 = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.ffn_norm2 = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.adaln_modulation = nn.Linear(cfg.adaln_dim, 4 * cfg.hidden_size, bias=True)

    def forward(self, h, c, rope, mask, rows_from: int = 0):
        """The block's output for rows `rows_from:` of h (all rows by default): every row still
        feeds the attention, but its output projection, the norms and the feed-forward run on those
        rows only, with the numbers of the full computation (row-wise ops and matmuls)."""
        scale_msa, gate_msa, scale_mlp, gate_mlp = self.adaln_modulation(c).chunk(4, dim=-1)
        # Products and sums commute exactly, so g * n(x) + h is built in the fresh norm output.
        attn = self.attention(into(self.attention_norm1(h), "mul", 1 + scale_msa), rope, mask, rows_from)
        h = into(into(self.attention_norm2(attn), "mul", torch.tanh(gate_msa)), "add", h[:, rows_from:])
        ffn = self.feed_forward(into(self.ffn_norm1(h), "mul", 1 + scale_mlp))
        return into(into(self.ffn_norm2(ffn), "mul", torch.tanh(gate_mlp)), "add", h)


class TimestepEmbedding(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.mlp_in = nn.Linear(dim, dim, bias=True)
        self.mlp_out = nn.Linear(dim, dim, bias=True)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return self.mlp_out(F.silu(self.mlp_in(emb)))


class FinalLayer(nn.Module):
    def __init__(self, cfg: Ideogram4Config):
        super().__init__()
        self.adaln_modulation = nn.Linear(cfg.adaln_dim, cfg.hidden_size, bias=True)
        self.linear = nn.Linear(cfg.hidden_size, cfg.in_channels, bias=True)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        # `c` is already SiLU'd; the reference applies SiLU a second time here (spec §A.3 step 12).
        scale = 1 + self.adaln_modulation(F.silu(c))
        return self.linear(F.layer_norm(h, (h.shape[-1],), eps=1e-6) * scale)


class Ideogram4Transformer(nn.Module):
    """Single-stream flow-matching DiT over a packed [text][image] token sequence."""

    def __init__(self, config: Ideogram4Config | None = None):
        super().__init__()
        cfg = self.config = config or Ideogram4Config()
        # Activations run in this dtype whatever the weights are stored in (fp8 / NF4 loaders keep
        # packed weights, so the weight dtype cannot tell us). Set it with `set_compute_dtype`.
        self.compute_dtype = torch.float32
        self.input_proj = nn.Linear(cfg.in_channels, cfg.hidden_size, bias=True)
        self.llm_cond_norm = RMSNorm(cfg.llm_features_dim, eps=1e-6)
        self.llm_cond_proj = nn.Linear(cfg.llm_features_dim, cfg.hidden_size, bias=True)
        self.t_embedding = TimestepEmbedding(cfg.hidden_size)
        self.adaln_proj = nn.Linear(cfg.hidden_size, cfg.adaln_dim, bias=True)
        self.embed_image_indicator = nn.Embedding(2, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.final_layer = FinalLayer(cfg)

    def set_compute_dtype(self, dtype: torch.dtype) -> "Ideogram4Transformer":
        if dtype not in (torch.float32, torch.bfloat16):
            # fp16 cannot hold the 65536 image positions and the model was never run in it (spec §H.1).
            raise ValueError(f"Ideogram 4 runs in bfloat16 or float32, not {dtype}")
        self.compute_dtype = dtype
        return self

    def embed_text(self, llm_features: torch.Tensor, indicator: torch.Tensor) -> torch.Tensor:
        """Text path of the conditional pass (spec §A.3 step 7) for the first T rows of the sequence:
        (B, T, llm_features_dim) features -> (B, T, hidden), zero on rows that are not text.

        Constant across sampling steps, so the sampler computes it once. Pass the text region only
        (T = text length): projecting the zero image rows too costs 2 * 53248 * 4608 FLOPs a row
        (2.2 TFLOP a step at 1024^2) and the fp32 norm over them gigabytes at 2048^2."""
        text_mask = (indicator[:, : llm_features.shape[1]] == LLM_TOKEN_INDICATOR).unsqueeze(-1).to(self.compute_dtype)
        text = self.llm_cond_norm(llm_features.to(self.compute_dtype) * text_mask)
        return self.llm_cond_proj(text) * text_mask

    def compile_blocks(self, **options) -> "Ideogram4Transformer":
        """Optional `torch.compile` of each block (regional compilation): all 34 blocks share one
        graph, so compiling is quick, and inductor fuses the norms, rotary, gates and SwiGLU product
        between the matmuls. The first call per sequence length compiles (both passes: two lengths)."""
        for block in self.layers:
            block.compile(**options)
        return self

    def rope(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotary tables for `position_ids`; constant across sampling steps, so callers may cache them."""
        cfg = self.config
        return mrope_cos_sin(position_ids, cfg.head_dim, cfg.rope_theta, cfg.mrope_section, self.compute_dtype)

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        indicator: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        llm_features: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        text_embedding: torch.Tensor | None = None,
        rows_from: int = 0,
    ) -> torch.Tensor:
        """Velocity for every position of the packed sequence (only image positions are meaningful).

        x: (B, L, in_channels) latent tokens; timestep: (B,) model time, rounded here to the compute
        dtype as the reference does; indicator: (B, L) with 3 = text, 2 = image, else padding;
        position_ids: (B, L, 3) (or pass precomputed `rope`); llm_features: (B, T, llm_features_dim)
        for the first T <= L rows (T = L: the whole packed sequence; T = text length: the text
        region alone, which skips projecting the all-zero image rows), or None for the image-only
        unconditional pass, which then skips the text path entirely (zero features contribute
        exactly zero there); text_embedding: `embed_text(llm_features, indicator)` computed once
        per sampling run (it does not depend on the step) to use instead of llm_features;
        attention_mask: (B, 1, L, L) bool, or None for full attention (a batch of one needs no
        mask); rows_from: return rows `rows_from:` only, e.g. the text length when only the image
        rows are read: the last block then runs its attention output projection and feed-forward on
        those rows alone (at 2 layers, 300 text + 1024 image tokens: 4 % of a step's FLOPs), with the
        same numbers.
        Returns (B, L - rows_from, in_channels) in the compute dtype.
        """
        dtype = self.compute_dtype
        is_image = indicator == OUTPUT_IMAGE_INDICATOR
        image_mask = is_image.unsqueeze(-1).to(dtype)
        x = x.to(dtype) * image_mask
        h = self.input_proj(x) * image_mask

        t_rounded = timestep.to(dtype)  # the reference rounds t to bf16 before the sinusoid
        t_cond = self.t_embedding(timestep_embedding(t_rounded, self.config.hidden_size).to(dtype))
        c = F.silu(self.adaln_proj(t_cond)).unsqueeze(1)  # (B, 1, adaln_dim), shared by all tokens

        if text_embedding is None and llm_features is not None:
            text_embedding = self.embed_text(llm_features, indicator)
        if text_embedding is not None:
            # Rows past the text region would add exactly zero: add to the text rows only, in place
            # (h is a fresh tensor here).
            h[:, : text_embedding.shape[1]] += text_embedding

        h = h + self.embed_image_indicator(is_image.long()).to(dtype)
        if rope is None:
            rope = self.rope(position_ids)
        last = len(self.layers) - 1
        for i, block in enumerate(self.layers):
            # Rows the caller does not read are needed as keys and values up to the last block only.
            h = block(h, c, rope, attention_mask, rows_from if i == last else 0)
        if not self.layers:
            h = h[:, rows_from:]
        return self.final_layer(h, c)
