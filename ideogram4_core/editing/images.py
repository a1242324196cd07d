"""Images to the model's supported sizes (spec §E.3), and the resampling the editing nodes share.

Size modes for an image that is not a supported size (`fit_images`):
- "refuse": a SizeError naming the rule broken and the nearest valid size;
- "resize": scaled into 256-2048 px keeping the aspect ratio, then each side rounded to a multiple
  of 16 (`resize_size`; the aspect ratio moves by at most one 16 px step per side);
- "crop": cut to multiples of 16 around the centre, keeping pixels as they are; beyond 6:1 the long
  side is cut to 6:1 first, and a side outside 256-2048 px is scaled into it keeping the aspect
  ratio (the only case that resamples).
A supported size is never resampled in any mode.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..constants import MAX_ASPECT_RATIO, MAX_SIDE, MIN_SIDE, SIZE_MULTIPLE
from ..sizes import SizeError, check_size, nearest_valid_size

SIZE_MODES = ("refuse", "resize", "crop")


def rgb(images: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) -> (B, H, W, 3) float32. An alpha channel is dropped, as ComfyUI's own VAE Encode
    does (Load Image hands transparency over as its MASK output); one grey channel is repeated."""
    if images.dim() == 3:
        images = images[None]
    if images.dim() != 4 or images.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected an IMAGE of shape (batch, height, width, 3 or 4 channels), got {tuple(images.shape)}")
    images = images.float()
    if images.shape[-1] == 1:
        return images.expand(*images.shape[:3], 3)
    return images[..., :3]


def resize_images(images: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """(B, H, W, C) -> (B, height, width, C): bicubic with antialiasing, clamped to [0, 1]. The
    same size is returned untouched (no resampling)."""
    if images.shape[1:3] == (height, width):
        return images
    x = F.interpolate(images.permute(0, 3, 1, 2), size=(height, width), mode="bicubic", antialias=True,
                      align_corners=False)
    return x.clamp(0.0, 1.0).permute(0, 2, 3, 1).contiguous()


def resize_masks(masks: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """(B, H, W) -> (B, height, width): bilinear with antialiasing (no overshoot), untouched at the same size."""
    if masks.shape[1:] == (height, width):
        return masks
    x = F.interpolate(masks[:, None], size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return x[:, 0].clamp(0.0, 1.0)


def center_crop(images: torch.Tensor, width: int, height: int) -> torch.Tensor:
    top, left = (images.shape[1] - height) // 2, (images.shape[2] - width) // 2
    return images[:, top:top + height, left:left + width]


def crop_plan(width: int, height: int) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """For "crop": (aspect crop, scaled size, final crop), each (width, height). The image is first
    cut around the centre to at most 6:1, then scaled (keeping its aspect ratio) only if a side is
    outside 256-2048 px, then cut to multiples of 16."""
    long_max = math.floor(MAX_ASPECT_RATIO * min(width, height))
    aspect = (min(width, long_max), height) if width >= height else (width, min(height, long_max))
    w, h = aspect
    scale = 1.0
    if min(w, h) < MIN_SIDE:
        scale = MIN_SIDE / min(w, h)
    elif max(w, h) > MAX_SIDE:
        scale = MAX_SIDE / max(w, h)
    scaled = (w, h) if scale == 1.0 else (min(MAX_SIDE, max(MIN_SIDE, round(w * scale))),
                                          min(MAX_SIDE, max(MIN_SIDE, round(h * scale))))
    final = (scaled[0] // SIZE_MULTIPLE * SIZE_MULTIPLE, scaled[1] // SIZE_MULTIPLE * SIZE_MULTIPLE)
    check_size(*final)  # holds by construction; a failure here is a bug, not a user error
    return aspect, scaled, final


def resize_size(width: int, height: int) -> tuple[int, int]:
    """The size "resize" scales to: the aspect ratio kept while bringing the sides into
    256-2048 px, then `sizes.nearest_valid_size` (which also widens beyond 6:1)."""
    scale = 1.0
    if max(width, height) > MAX_SIDE:
        scale = MAX_SIDE / max(width, height)
    if min(width, height) * scale < MIN_SIDE:
        scale = min(MIN_SIDE / min(width, height), MAX_SIDE / max(width, height))
    return nearest_valid_size(round(width * scale), round(height * scale))


def fit_images(images: torch.Tensor, mode: str) -> torch.Tensor:
    """(B, H, W, 3) to a supported size by `mode` (see the module docstring)."""
    if mode not in SIZE_MODES:
        raise ValueError(f"unknown size mode {mode!r}; choose one of {', '.join(SIZE_MODES)}")
    height, width = images.shape[1:3]
    if mode == "refuse":
        try:
            check_size(width, height)
        except SizeError as err:
            (rw, rh), (cw, ch) = resize_size(width, height), crop_plan(width, height)[2]
            raise SizeError(f"the image is {width}x{height} px, which Ideogram 4 cannot sample: {err} Set "
                            f"size_mode to 'resize' (scales it to {rw}x{rh}) or 'crop' (cuts it to {cw}x{ch}) "
                            "to fit it.") from None
        return images
    if mode == "resize":
        return resize_images(images, *resize_size(width, height))
    aspect, scaled, final = crop_plan(width, height)
    return center_crop(resize_images(center_crop(images, *aspect), *scaled), *final)
