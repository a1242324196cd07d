"""Layout preview of a caption's bounding boxes as an image tensor, with torch only (no PIL).

The preview has the target aspect ratio. Each element with a usable bbox becomes a tinted box
with an outline in its first palette colour (or a fixed per-index colour), swatches of its palette
along its top edge and its 1-based index as a label; text elements are hatched so they stand out
from objects. The global style palette is a strip along the bottom edge.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping

import torch

from .parse import parse_caption_text

# Distinct colours for elements without a palette (RGB 0..255).
_DEFAULT_COLOURS = ((230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66),
                    (0, 114, 178), (213, 94, 0), (204, 121, 167), (200, 200, 200))
_CANVAS_GREY = 0.12
# 3x5 bitmaps for the digits 0-9, one row per string, for element index labels.
_DIGITS = ("111101101101111", "010110010010111", "111001111100111", "111001111001111", "101101111001001",
           "111100111001111", "111100111101111", "111001001001001", "111101111101111", "111101111001111")


def _rgb(colour: Any) -> torch.Tensor | None:
    if isinstance(colour, str) and len(colour) == 7 and colour[0] == "#":
        try:
            return torch.tensor([int(colour[i:i + 2], 16) / 255.0 for i in (1, 3, 5)])
        except ValueError:
            return None
    return None


def _palette(value: Any) -> list[torch.Tensor]:
    return [c for c in (_rgb(v) for v in value) if c is not None] if isinstance(value, list) else []


def _swatches(img: torch.Tensor, colours: list[torch.Tensor], y0: int, y1: int, x0: int, x1: int) -> None:
    n = len(colours)
    for i, colour in enumerate(colours):
        a, b = x0 + (x1 - x0) * i // n, x0 + (x1 - x0) * (i + 1) // n
        img[y0:y1, a:b] = colour


def _label(img: torch.Tensor, number: int, y: int, x: int, scale: int) -> None:
    glyphs = [torch.tensor([float(c) for c in _DIGITS[int(d)]]).reshape(5, 3) for d in str(number)]
    bitmap = torch.cat([torch.nn.functional.pad(g, (0, 1)) for g in glyphs], dim=1)  # 1 px between digits
    bitmap = torch.nn.functional.pad(bitmap, (1, 0, 1, 1)).repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    h, w = min(bitmap.shape[0], img.shape[0] - y), min(bitmap.shape[1], img.shape[1] - x)
    if h > 0 and w > 0:
        img[y:y + h, x:x + w] = bitmap[:h, :w, None].expand(h, w, 3)


def _box(bbox: Any, height: int, width: int) -> tuple[int, int, int, int] | None:
    if not isinstance(bbox, list) or len(bbox) != 4:
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox):
        return None
    ymin, xmin, ymax, xmax = (min(1000.0, max(0.0, float(v))) for v in bbox)
    ymin, ymax = sorted((ymin, ymax))
    xmin, xmax = sorted((xmin, xmax))
    y0, x0 = min(height - 1, int(ymin * height / 1000)), min(width - 1, int(xmin * width / 1000))
    y1, x1 = max(y0 + 1, math.ceil(ymax * height / 1000)), max(x0 + 1, math.ceil(xmax * width / 1000))
    return y0, min(y1, height), x0, min(x1, width)


def _as_caption(caption: str | Mapping) -> dict:
    if isinstance(caption, Mapping):
        return json.loads(json.dumps(caption, ensure_ascii=False))  # a private, plain copy
    value = parse_caption_text(caption).value
    return value if isinstance(value, dict) else {}


def render_layout_preview(caption: str | Mapping, width: int, height: int, long_edge: int = 512) -> torch.Tensor:
    """Float32 tensor (H, W, 3) in [0, 1] at the aspect ratio width:height, long side `long_edge` px.

    Accepts caption text or a parsed caption; elements without a usable bbox are skipped, so an
    unverified caption previews as far as it can. Add a batch dimension for a ComfyUI IMAGE.
    """
    if width <= 0 or height <= 0 or long_edge <= 0:
        raise ValueError(f"width, height and long_edge must be positive, got {width}, {height}, {long_edge}")
    scale = long_edge / max(width, height)
    h, w = max(1, round(height * scale)), max(1, round(width * scale))
    img = torch.full((h, w, 3), _CANVAS_GREY)
    cap = _as_caption(caption)
    style = cap.get("style_description")
    style_palette = _palette(style.get("color_palette")) if isinstance(style, dict) else []
    if style_palette:
        _swatches(img, style_palette, h - max(2, h // 40), h, 0, w)
    comp = cap.get("compositional_deconstruction")
    elements = comp.get("elements") if isinstance(comp, dict) else None
    thick, unit = max(1, min(h, w) // 256), max(1, min(h, w) // 128)
    for index, elem in enumerate(elements if isinstance(elements, list) else []):
        box = _box(elem.get("bbox"), h, w) if isinstance(elem, dict) else None
        if box is None:
            continue
        y0, y1, x0, x1 = box
        palette = _palette(elem.get("color_palette"))
        colour = palette[0] if palette else torch.tensor(_DEFAULT_COLOURS[index % len(_DEFAULT_COLOURS)]) / 255.0
        region = img[y0:y1, x0:x1]
        alpha = torch.full(region.shape[:2], 0.25)
        if elem.get("type") == "text":  # diagonal hatching marks text elements
            yy, xx = torch.meshgrid(torch.arange(y0, y1), torch.arange(x0, x1), indexing="ij")
            alpha = torch.where(((yy + xx) // (4 * unit)) % 2 == 0, 0.5, 0.15)
        region.mul_(1 - alpha[..., None]).add_(alpha[..., None] * colour)
        for rows, cols in ((slice(y0, y0 + thick), slice(x0, x1)), (slice(y1 - thick, y1), slice(x0, x1)),
                           (slice(y0, y1), slice(x0, x0 + thick)), (slice(y0, y1), slice(x1 - thick, x1))):
            img[rows, cols] = colour
        if len(palette) > 1 and y1 - y0 > 6 * unit:
            _swatches(img, palette, y0 + thick, y0 + thick + 2 * unit, x0 + thick, x1 - thick)
        _label(img, index + 1, y0 + thick, x0 + thick, unit)
    return img.clamp_(0.0, 1.0)
