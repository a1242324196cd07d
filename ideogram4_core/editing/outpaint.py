"""Outpainting: pad an image on chosen edges and mark the new area as the mask to inpaint.

The new area is filled so that encoding it gives the sampler something sensible to start from
(it matters only at denoise < 1; at denoise 1 the masked tokens start from pure noise):
- "edge": each new pixel repeats the nearest edge pixel (colours continue outwards);
- "mirror": the image reflected at its edges (texture continues; any pad width);
- "gray": mid grey 0.5, like ComfyUI's Pad Image for Outpainting.
The mask is 1 on the new area and, with `overlap` px, fades linearly from 1 to 0 over that many
pixels into the original from each padded edge, so the seam is regenerated and blended.
"""

from __future__ import annotations

import torch

from .images import rgb

FILLS = ("edge", "mirror", "gray")


def _source_index(length: int, before: int, after: int, fill: str, device) -> torch.Tensor:
    i = torch.arange(-before, length + after, device=device)
    if fill == "edge":
        return i.clamp(0, length - 1)
    period = i.remainder(2 * length)  # symmetric reflection: ... 1 0 | 0 1 ... n-1 | n-1 n-2 ...
    return torch.where(period < length, period, 2 * length - 1 - period)


def _ramp(length: int, before: int, after: int, overlap: int, device) -> torch.Tensor:
    """Along one axis: 1 on the padding, fading over `overlap` px into the original from each padded edge."""
    i = torch.arange(-before, length + after, device=device, dtype=torch.float32)
    ramp = torch.zeros_like(i)
    if before:
        ramp = torch.maximum(ramp, ((overlap - i) / (overlap + 1)).clamp(0, 1) if overlap else (i < 0).float())
    if after:
        j = length - 1 - i
        ramp = torch.maximum(ramp, ((overlap - j) / (overlap + 1)).clamp(0, 1) if overlap else (j < 0).float())
    return torch.where((i < 0) | (i >= length), torch.ones_like(i), ramp)


def pad_for_outpaint(image: torch.Tensor, left: int = 0, top: int = 0, right: int = 0, bottom: int = 0,
                     fill: str = "edge", overlap: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, H, W, C) -> (padded image (B, H', W', 3), mask (1, H', W'), 1 = generate)."""
    if fill not in FILLS:
        raise ValueError(f"unknown fill {fill!r}; choose one of {', '.join(FILLS)}")
    pads = dict(left=left, top=top, right=right, bottom=bottom, overlap=overlap)
    if any(v < 0 for v in pads.values()):
        raise ValueError(f"padding and overlap cannot be negative: {pads}")
    if not (left or top or right or bottom):
        raise ValueError("nothing to outpaint: set at least one of left, top, right, bottom above 0")
    image = rgb(image)
    _, height, width, _ = image.shape
    if overlap >= min(width if (left or right) else height, height if (top or bottom) else width):
        raise ValueError(f"overlap ({overlap} px) must be smaller than the image ({width}x{height})")
    if fill == "gray":
        padded = image.new_full((image.shape[0], height + top + bottom, width + left + right, 3), 0.5)
        padded[:, top:top + height, left:left + width] = image
    else:
        rows = _source_index(height, top, bottom, fill, image.device)
        cols = _source_index(width, left, right, fill, image.device)
        padded = image[:, rows][:, :, cols]
    mask = torch.maximum(_ramp(height, top, bottom, overlap, image.device)[:, None],
                         _ramp(width, left, right, overlap, image.device)[None, :])
    return padded, mask[None]
