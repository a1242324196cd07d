"""Build captions from high-level fields, and serialise them the way the model saw them.

Serialisation follows the official pipeline (spec §G.1, prompting guide): `json.dumps` with
`ensure_ascii=False` and `separators=(",", ":")`, keys in the order given (the builder and repair
mode put them in canonical order). No trailing newline.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping, Sequence

from .schema import ELEMENT_ORDERS

STYLE_KINDS = ("none", "photo", "art_style")


def serialize_caption(caption: Mapping) -> str:
    """Compact canonical JSON text: literal UTF-8, no spaces, key order as given."""
    return json.dumps(caption, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def wrap_plain_text(text: str) -> dict:
    """The smallest valid caption carrying `text`: it becomes the high-level description.

    That field is the one the model reads as a free-text summary of the whole image, so the
    user's words reach the model unchanged, inside the structure it was trained on.
    """
    return {"high_level_description": text.strip(),
            "compositional_deconstruction": {"background": "", "elements": []}}


def _palette(colours: Sequence[str] | None) -> list[str]:
    # Upper-case and drop blanks; validation (length, format) is the verifier's job.
    return [c.strip().upper() for c in (colours or ()) if isinstance(c, str) and c.strip()]


def build_element(type: str = "obj", desc: str = "", text: str | None = None,
                  bbox: Sequence[int] | None = None, color_palette: Sequence[str] | None = None) -> dict:
    """One element in canonical key order. `bbox` is [y_min, x_min, y_max, x_max] on 0..1000."""
    element: dict[str, Any] = {"type": type}
    if bbox is not None:
        # A canvas yields fractional pixels; rounding to the 0..1000 grid is the builder's job.
        # Anything that is not a finite number is passed on for the verifier to report.
        element["bbox"] = [int(round(v)) if isinstance(v, (int, float)) and not isinstance(v, bool)
                           and math.isfinite(v) else v for v in bbox]
    if type == "text":
        element["text"] = text or ""
    element["desc"] = desc
    palette = _palette(color_palette)
    if palette:
        element["color_palette"] = palette
    order = ELEMENT_ORDERS.get(type, tuple(element))
    return {k: element[k] for k in order if k in element}


def build_caption(*, high_level_description: str = "", background: str = "",
                  elements: Sequence[Mapping] = (), style: str = "none", photo: str = "", art_style: str = "",
                  aesthetics: str = "", lighting: str = "", medium: str = "",
                  color_palette: Sequence[str] | None = None) -> dict:
    """A caption dict in canonical order from the fields a builder node shows.

    `style` is "none", "photo" or "art_style" and picks which style key is written. `elements` are
    mappings with the element keys (type, bbox, text, desc, color_palette), e.g. ComfyUI's
    CreateBoundingBoxes output. An empty summary is omitted. A palette with style "none" is kept
    in a style block so the verifier can say what that block is missing, rather than dropping
    the user's colours silently. Pass the result to `verify_caption` to check and serialise it.
    """
    if style not in STYLE_KINDS:
        raise ValueError(f"style must be one of {STYLE_KINDS}, got {style!r}")
    caption: dict[str, Any] = {}
    if high_level_description.strip():
        caption["high_level_description"] = high_level_description
    palette = _palette(color_palette)
    if style != "none":
        block: dict[str, Any] = {"aesthetics": aesthetics, "lighting": lighting}
        if style == "photo":
            block.update(photo=photo, medium=medium)
        else:
            block.update(medium=medium, art_style=art_style)
        caption["style_description"] = block
    elif palette:
        caption["style_description"] = {}
    if palette:
        caption["style_description"]["color_palette"] = palette
    caption["compositional_deconstruction"] = {
        "background": background,
        "elements": [build_element(**{k: e[k] for k in ("type", "desc", "text", "bbox", "color_palette") if k in e})
                     for e in elements],
    }
    return caption
