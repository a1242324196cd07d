"""Inpainting at a good size: crop around the mask, sample the crop, stitch the result back.

`prepare_inpaint` grows and feathers the mask, picks the box (around the mask plus `context`
pixels, or the whole image), and resizes that box to a supported size of about `resolution`²
pixels: the working image and mask to encode and sample. `stitch` resizes a generated working
image back to the box and pastes it into the original: with `blend`, pixel by pixel by the
feathered mask (out = m·generated + (1 - m)·original, and exactly the original where m = 0);
without, the whole box. Pixels outside the box are never touched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..constants import MAX_ASPECT_RATIO
from ..sizes import nearest_valid_size
from .images import resize_images, resize_masks, rgb
from .masks import MaskError, as_masks, check_not_empty, check_pair, feather, grow

MODES = ("crop around mask", "whole image")


@dataclass
class Stitch:
    """What `stitch` needs to put a generated crop back."""

    original: torch.Tensor  # (B, H, W, 3) the full input image
    box: tuple[int, int, int, int]  # x, y, width, height in original pixels
    blend_mask: torch.Tensor  # (1 or B, height, width) the feathered mask inside the box
    size: tuple[int, int]  # (width, height) of the working image the sampler made


def _span(start: int, end: int, length: int, limit: int) -> tuple[int, int]:
    """Widen [start, end) around its centre to `length` (at most `limit`), shifted to fit in [0, limit)."""
    length = min(limit, max(length, end - start))
    start = max(0, min((start + end - length) // 2, limit - length))
    return start, start + length


def mask_box(mask: torch.Tensor, context: int, width: int, height: int) -> tuple[int, int, int, int]:
    """Bounding box of mask > 0 over the whole batch, `context` px wider on every side, widened on
    its short side to the 6:1 aspect limit, clipped to the image."""
    rows, cols = (mask > 0).any(0).any(1).nonzero(), (mask > 0).any(0).any(0).nonzero()
    y0, y1 = int(rows.min()) - context, int(rows.max()) + 1 + context
    x0, x1 = int(cols.min()) - context, int(cols.max()) + 1 + context
    x0, x1, y0, y1 = max(0, x0), min(width, x1), max(0, y0), min(height, y1)
    w, h = x1 - x0, y1 - y0
    x0, x1 = _span(x0, x1, math.ceil(h / MAX_ASPECT_RATIO), width)
    y0, y1 = _span(y0, y1, math.ceil(w / MAX_ASPECT_RATIO), height)
    return x0, y0, x1 - x0, y1 - y0


def working_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """A supported size with the box's aspect ratio and about resolution² pixels (0: the box's own
    scale), rounded to multiples of 16 by `sizes.nearest_valid_size`."""
    scale = resolution / math.sqrt(width * height) if resolution > 0 else 1.0
    return nearest_valid_size(round(width * scale), round(height * scale))


def prepare_inpaint(image: torch.Tensor, mask: torch.Tensor, grow_px: int = 0, feather_px: int = 0,
                    mode: str = MODES[0], context: int = 64, resolution: int = 1024
                    ) -> tuple[torch.Tensor, torch.Tensor, Stitch]:
    """(image, mask) -> (working image (B, h, w, 3), working mask (1 or B, h, w), Stitch)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if context < 0 or resolution < 0:
        raise ValueError(f"context ({context}) and resolution ({resolution}) cannot be negative")
    image, mask = rgb(image), as_masks(mask).to(image.device)
    check_pair(image, mask)
    check_not_empty(mask)
    soft = feather(grow(mask, grow_px), feather_px)
    check_not_empty(soft)  # a negative grow can erase a thin mask
    height, width = image.shape[1:3]
    if bool((soft > 0).all()):
        raise MaskError("the mask (after grow and feather) covers the whole image, so nothing of the input would "
                        "be kept. To change everything, use VAE Encode and denoise without a mask; to keep "
                        "parts, paint only what should change (or lower grow / feather).")
    x, y, w, h = mask_box(soft, context, width, height) if mode == MODES[0] else (0, 0, width, height)
    size = working_size(w, h, resolution)
    crop_image, crop_mask = image[:, y:y + h, x:x + w], soft[:, y:y + h, x:x + w]
    stitch_info = Stitch(image, (x, y, w, h), crop_mask, size)
    return resize_images(crop_image, *size), resize_masks(crop_mask, *size), stitch_info


def stitch(info: Stitch, generated: torch.Tensor, blend: bool = True) -> torch.Tensor:
    """Paste `generated` (B, h, w, 3) at the working size back into the original image."""
    generated = rgb(generated).to(info.original.device)
    if tuple(generated.shape[1:3]) != (info.size[1], info.size[0]):
        raise ValueError(f"the image to stitch is {generated.shape[2]}x{generated.shape[1]} px but Inpaint Crop "
                         f"made a {info.size[0]}x{info.size[1]} crop: connect the decoded result of sampling "
                         "that crop")
    original = info.original
    if original.shape[0] != generated.shape[0]:
        if original.shape[0] != 1:
            raise ValueError(f"{generated.shape[0]} generated images for {original.shape[0]} originals")
        original = original.expand(generated.shape[0], -1, -1, -1)
    x, y, w, h = info.box
    back = resize_images(generated, w, h)
    region = original[:, y:y + h, x:x + w]
    if blend:
        m = info.blend_mask[..., None].to(back.dtype)
        back = torch.where(m > 0, m * back + (1.0 - m) * region, region)
    out = original.clone()
    out[:, y:y + h, x:x + w] = back
    return out
