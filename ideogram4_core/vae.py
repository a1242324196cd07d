"""The Flux.2 KL autoencoder (spec §E.1) and Ideogram 4 latent <-> pixel conversion (spec §E.2).

Module and tensor names follow BFL's original code (`decoder.up.{l}.block.{b}.conv1`,
`decoder.mid.attn_1.q`, `decoder.post_quant_conv`, `bn.running_mean`), the names of ComfyUI's
`flux2-vae.safetensors`. Files (either naming) are read by `vae_file.load_vae`.

Decoding uses Ideogram's official constants (`latents.denormalize`), never the file's `bn`
statistics: those are kept only so `vae_file.compare_batch_norm` can say how far they are from
the official ones (spec §E.2 open question).

Tiled decoding (`tile_size`): the latent is cut into overlapping tiles, each decoded on its own
and blended with linear ramps across the overlaps (tiled encoding mirrors this on the image). It
is an approximation, because GroupNorm and the mid-block attention see one tile instead of the
whole image. The suggested 1024 px tiles
(`DEFAULT_TILE_SIZE`) give each tile the statistics of a 1024² image, a size this VAE decodes in
one piece all the time, so images up to 1024² are never split; the 256 px overlap
(`DEFAULT_TILE_OVERLAP`, 32 latent pixels) is about twice the decoder's 3x3-conv receptive radius
(~17 latent pixels: 11 convs at latent resolution plus the upsampling stages), so where a tile's
weight is high its zero-padded border is out of reach.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .constants import LATENT_CHANNELS, VAE_CHANNELS
from .latents import denormalize, normalize, tokens_to_vae_latent, vae_latent_to_tokens

VAE_SCALE = 8  # pixels per VAE latent pixel
DEFAULT_TILE_SIZE = 1024  # image pixels; see the module docstring
DEFAULT_TILE_OVERLAP = 256


@dataclass(frozen=True)
class Flux2VAEConfig:
    """Defaults are the real Flux.2 VAE (≈84 M parameters). Channels are per level, level 0 =
    full resolution. `encoder_channels` is None for a decoder-only file."""

    decoder_channels: tuple[int, ...] = (128, 256, 512, 512)
    encoder_channels: tuple[int, ...] | None = (128, 256, 512, 512)
    decoder_blocks: int = 3
    encoder_blocks: int = 2
    z_channels: int = VAE_CHANNELS
    image_channels: int = 3
    norm_groups: int = 32
    batch_norm: bool = True  # whether the file carries `bn.running_mean` / `bn.running_var`


# ---------------------------------------------------------------------------------------------
# Blocks


def _norm(groups: int, channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6)


def _conv3(c_in: int, c_out: int, stride: int = 1, padding: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=padding)


class ResnetBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, groups: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(groups, c_in), _conv3(c_in, c_out)
        self.norm2, self.conv2 = _norm(groups, c_out), _conv3(c_out, c_out)
        self.nin_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels; projections are 1x1 convs."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = _norm(groups, channels)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(channels, channels, 1) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (proj(y).reshape(b, 1, c, h * w).transpose(-1, -2) for proj in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj_out(y)


class MidBlock(nn.Module):
    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, groups)
        self.attn_1 = AttnBlock(channels, groups)
        self.block_2 = ResnetBlock(channels, channels, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = _conv3(channels, channels, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric: the original model was trained so


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = _conv3(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution level: `block` res blocks, then an optional `downsample` / `upsample`."""

    def __init__(self, c_in: int, c_out: int, blocks: int, groups: int, resample: str | None):
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(c_in if i == 0 else c_out, c_out, groups) for i in range(blocks))
        if resample == "down":
            self.downsample = Downsample(c_out)
        elif resample == "up":
            self.upsample = Upsample(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        if hasattr(self, "downsample"):
            x = self.downsample(x)
        if hasattr(self, "upsample"):
            x = self.upsample(x)
        return x


class Encoder(nn.Module):
    """(B, 3, H, W) in [-1, 1] -> (B, 2·z, H/8, W/8) posterior moments (mean, logvar)."""

    def __init__(self, cfg: Flux2VAEConfig):
        super().__init__()
        channels, groups, last = cfg.encoder_channels, cfg.norm_groups, len(cfg.encoder_channels) - 1
        self.conv_in = _conv3(cfg.image_channels, channels[0])
        ins = (channels[0],) + channels[:-1]
        self.down = nn.ModuleList(Level(c_in, c, cfg.encoder_blocks, groups, None if i == last else "down")
                                  for i, (c_in, c) in enumerate(zip(ins, channels)))
        self.mid = MidBlock(channels[-1], groups)
        self.norm_out = _norm(groups, channels[-1])
        self.conv_out = _conv3(channels[-1], 2 * cfg.z_channels)
        self.quant_conv = nn.Conv2d(2 * cfg.z_channels, 2 * cfg.z_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for level in self.down:
            x = level(x)
        x = self.conv_out(F.silu(self.norm_out(self.mid(x))))
        return self.quant_conv(x)


class Decoder(nn.Module):
    """(B, z, h, w) raw latents -> (B, 3, 8h, 8w), unclamped. `up[0]` is the full-resolution level
    and runs last (BFL order)."""

    def __init__(self, cfg: Flux2VAEConfig):
        super().__init__()
        channels, groups = cfg.decoder_channels, cfg.norm_groups
        self.post_quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 1)
        self.conv_in = _conv3(cfg.z_channels, channels[-1])
        self.mid = MidBlock(channels[-1], groups)
        ins = channels[1:] + (channels[-1],)  # each level is entered from the level below it
        self.up = nn.ModuleList(Level(c_in, c, cfg.decoder_blocks, groups, None if i == 0 else "up")
                                for i, (c_in, c) in enumerate(zip(ins, channels)))
        self.norm_out = _norm(groups, channels[0])
        self.conv_out = _conv3(channels[0], cfg.image_channels)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid(self.conv_in(self.post_quant_conv(z)))
        for level in reversed(self.up):
            x = level(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class Flux2VAE(nn.Module):
    def __init__(self, cfg: Flux2VAEConfig = Flux2VAEConfig()):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg) if cfg.encoder_channels is not None else None
        self.decoder = Decoder(cfg)
        # Read from the file for `compare_batch_norm` only; never used to decode.
        self.bn = nn.BatchNorm2d(LATENT_CHANNELS, eps=1e-4, affine=False) if cfg.batch_norm else None

    @property
    def device(self) -> torch.device:
        return self.decoder.conv_out.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.conv_out.weight.dtype


# ---------------------------------------------------------------------------------------------
# Decoding and encoding


def decode_tokens(vae: Flux2VAE, tokens: torch.Tensor, grid_h: int, grid_w: int, *,
                  dtype: torch.dtype | None = None, tile_size: int | None = None,
                  tile_overlap: int = DEFAULT_TILE_OVERLAP) -> torch.Tensor:
    """Model-space tokens (B, grid_h·grid_w, 128) -> images (B, 16·grid_h, 16·grid_w, 3) float32 in
    [0, 1] (ComfyUI IMAGE), on the VAE's device.

    Official constants -> unpatchify -> decoder -> clamp [-1, 1] -> (x + 1) / 2. `dtype`: compute
    dtype (None: the VAE's weight dtype; another dtype casts a copy of the weights for this call).
    `tile_size` / `tile_overlap` in image pixels, multiples of 8; `tile_size` None decodes in one
    piece, like the reference."""
    if tokens.dim() != 3 or tokens.shape[1] != grid_h * grid_w or tokens.shape[2] != LATENT_CHANNELS:
        raise ValueError(f"expected tokens of shape (B, {grid_h}·{grid_w}, {LATENT_CHANNELS}), "
                         f"got {tuple(tokens.shape)}")
    raw = tokens_to_vae_latent(denormalize(tokens), grid_h, grid_w)
    decoder = _in_dtype(vae.decoder, dtype)

    def decode(z: torch.Tensor) -> torch.Tensor:
        return decoder(z).float().clamp(-1.0, 1.0)

    with torch.no_grad():
        z = raw.to(device=vae.device, dtype=dtype or vae.dtype)
        if tile_size is None:
            pixels = decode(z)
        else:
            pixels = _decode_tiled(decode, z, *_latent_tiling(tile_size, tile_overlap))
    return ((pixels + 1.0) / 2.0).permute(0, 2, 3, 1).contiguous()


def encode_images(vae: Flux2VAE, images: torch.Tensor, *, dtype: torch.dtype | None = None,
                  tile_size: int | None = None, tile_overlap: int = DEFAULT_TILE_OVERLAP) -> torch.Tensor:
    """Images (B, H, W, 3) in [0, 1], H and W multiples of 16 -> model-space tokens
    (B, H/16·W/16, 128) float32: the inverse of `decode_tokens`, step by step in reverse:
    [0, 1] -> [-1, 1], encoder -> posterior mean (the first z channels; no sampling), patchify in
    (p_row, p_col, c) order, official normalisation (`latents.normalize`).

    `tile_size` / `tile_overlap` in image pixels, multiples of 8: the image is cut into overlapping
    tiles, each encoded alone and blended with linear ramps in the raw latent, the mirror of tiled
    decoding (and approximate for the same reason: each tile has its own GroupNorm statistics and
    attention). None encodes in one piece, like the reference."""
    if vae.encoder is None:
        raise ValueError("this VAE file has no encoder, so it can only decode")
    if images.dim() != 4 or images.shape[-1] != 3 or images.shape[1] % 16 or images.shape[2] % 16:
        raise ValueError(f"expected images (B, H, W, 3) with H, W multiples of 16, got {tuple(images.shape)}")
    encoder, z = _in_dtype(vae.encoder, dtype), vae.config.z_channels

    def encode(x: torch.Tensor) -> torch.Tensor:
        return encoder(x)[:, :z].float()

    with torch.no_grad():
        x = (images.permute(0, 3, 1, 2) * 2.0 - 1.0).to(device=vae.device, dtype=dtype or vae.dtype)
        mean = encode(x) if tile_size is None else _encode_tiled(encode, x, *_latent_tiling(tile_size, tile_overlap))
    return normalize(vae_latent_to_tokens(mean))


def _in_dtype(module: nn.Module, dtype: torch.dtype | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """`module` computed in `dtype`, leaving the module itself untouched (weights cast once)."""
    tensors = dict(module.named_parameters()) | dict(module.named_buffers())
    if dtype is None or all(t.dtype == dtype for t in tensors.values() if t.is_floating_point()):
        return module
    cast = {n: t.to(dtype) if t.is_floating_point() else t for n, t in tensors.items()}
    return lambda x: torch.func.functional_call(module, cast, (x,))


def _latent_tiling(tile_size: int, overlap: int) -> tuple[int, int]:
    if tile_size % VAE_SCALE or overlap % VAE_SCALE or not 0 <= overlap < tile_size:
        raise ValueError(f"tile_size ({tile_size}) and tile_overlap ({overlap}) must be multiples of "
                         f"{VAE_SCALE} with 0 <= tile_overlap < tile_size")
    return tile_size // VAE_SCALE, overlap // VAE_SCALE


def _tile_spans(length: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """Equal tiles spread evenly over [0, length), neighbours overlapping by at least `overlap`."""
    if length <= tile:
        return [(0, length)]
    count = math.ceil((length - overlap) / (tile - overlap))
    return [(s, s + tile) for s in (round(i * (length - tile) / (count - 1)) for i in range(count))]


def _ramp(spans: list[tuple[int, int]], i: int, scale: int = VAE_SCALE) -> torch.Tensor:
    """Blend weights of tile i in output units (`scale` per span unit: pixels when decoding, latent
    pixels (1) when encoding): linear ramps over each overlap that sum to 1 with the neighbour's,
    1 elsewhere."""
    start, end = spans[i]
    weight = torch.ones((end - start) * scale)
    before = (spans[i - 1][1] - start) * scale if i > 0 else 0
    after = (end - spans[i + 1][0]) * scale if i + 1 < len(spans) else 0
    if before > 0:
        weight[:before] = torch.minimum(weight[:before], (torch.arange(before) + 0.5) / before)
    if after > 0:
        weight[-after:] = torch.minimum(weight[-after:], ((torch.arange(after) + 0.5) / after).flip(0))
    return weight


def _decode_tiled(decode: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, tile: int,
                  overlap: int) -> torch.Tensor:
    rows, cols = _tile_spans(z.shape[2], tile, overlap), _tile_spans(z.shape[3], tile, overlap)
    if len(rows) == len(cols) == 1:
        return decode(z)
    s = VAE_SCALE
    total, weight_sum = None, torch.zeros(z.shape[2] * s, z.shape[3] * s, device=z.device)
    for i, (y0, y1) in enumerate(rows):
        for j, (x0, x1) in enumerate(cols):
            pixels = decode(z[:, :, y0:y1, x0:x1])
            if total is None:
                total = pixels.new_zeros(pixels.shape[0], pixels.shape[1], *weight_sum.shape)
            weight = (_ramp(rows, i)[:, None] * _ramp(cols, j)[None, :]).to(z.device)
            total[:, :, y0 * s:y1 * s, x0 * s:x1 * s] += pixels * weight
            weight_sum[y0 * s:y1 * s, x0 * s:x1 * s] += weight
    return total / weight_sum


def _encode_tiled(encode: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int,
                  overlap: int) -> torch.Tensor:
    """`tile` / `overlap` in latent pixels; spans are laid on the latent grid (H/8, W/8) and each
    covers 8x as many image pixels."""
    rows, cols = _tile_spans(x.shape[2] // VAE_SCALE, tile, overlap), _tile_spans(x.shape[3] // VAE_SCALE, tile, overlap)
    if len(rows) == len(cols) == 1:
        return encode(x)
    s = VAE_SCALE
    total, weight_sum = None, torch.zeros(x.shape[2] // s, x.shape[3] // s, device=x.device)
    for i, (y0, y1) in enumerate(rows):
        for j, (x0, x1) in enumerate(cols):
            latent = encode(x[:, :, y0 * s:y1 * s, x0 * s:x1 * s])
            if total is None:
                total = latent.new_zeros(latent.shape[0], latent.shape[1], *weight_sum.shape)
            weight = (_ramp(rows, i, 1)[:, None] * _ramp(cols, j, 1)[None, :]).to(x.device)
            total[:, :, y0:y1, x0:x1] += latent * weight
            weight_sum[y0:y1, x0:x1] += weight
    return total / weight_sum
