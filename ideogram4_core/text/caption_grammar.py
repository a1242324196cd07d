"""The JSON Schema that constrains generated captions (magic prompt, describe).

It is the caption schema of `captions/schema.py` (whose names and limits it imports), tightened
into something a decoder can follow token by token and that the strict verifier always accepts:

- one fixed key order per object (the constrained-decoding library emits properties in the
  order they are listed, and `anyOf` branches give photo vs art_style and obj vs text elements
  their own orders);
- every string non-empty, every caption at least one element, no whitespace between tokens
  (compact form) and no `\\uXXXX` escapes (so no lone surrogates); those two are compiler options
  (`COMPILE_OPTIONS`), not schema keywords;
- what the caller asks for made required or left out: the style block, bboxes, palettes.

One rule is not expressible: y_min <= y_max and x_min <= x_max inside a bbox (the two pairs
interleave, so no grammar of sensible size states it). `prompting.finish_caption` guarantees it
instead: a generated caption goes through repair mode, whose only possible repair here is swapping
such a pair, and then through the strict verifier.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..captions.schema import (BBOX_MAX, BBOX_MIN, COMPOSITION_ORDER, ELEMENT_ORDERS, ELEMENT_PALETTE_MAX,
                               HEX_COLOR_PATTERN, STYLE_ORDER_ART, STYLE_ORDER_PHOTO, STYLE_PALETTE_MAX,
                               TOP_LEVEL_ORDER)

# Generation-only limits: a caption carries at least one element (an empty list earns a verifier
# warning and an off-distribution image); more than this many elements is never useful.
MAX_ELEMENTS = 32
# Compiler options for llguidance's JSON compiler: compact separators, no whitespace, and only the
# escapes a caption needs (quote, backslash, newline), so `\u` (and with it a lone surrogate,
# which the verifier refuses) cannot be produced.
COMPILE_OPTIONS = {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":",
                   "json_allowed_escapes": '"\\n'}


@dataclass(frozen=True)
class CaptionShape:
    """What a generated caption must contain.

    style: write a style_description (photo or art_style, with its required fields).
    bboxes: every element has a bbox (False: no element has one).
    palettes: "required" (style and every element have a color_palette), "optional" (the model
    decides) or "none".
    """

    style: bool = True
    bboxes: bool = True
    palettes: str = "optional"

    def __post_init__(self):
        if self.palettes not in ("required", "optional", "none"):
            raise ValueError(f"palettes must be 'required', 'optional' or 'none', got {self.palettes!r}")


def _text() -> dict:
    return {"type": "string", "minLength": 1}


def _palette(max_items: int) -> dict:
    colour = {"type": "string", "pattern": HEX_COLOR_PATTERN}
    return {"type": "array", "minItems": 1, "maxItems": max_items, "items": colour}


BBOX = {"type": "array", "minItems": 4, "maxItems": 4,
        "items": {"type": "integer", "minimum": BBOX_MIN, "maximum": BBOX_MAX}}


def _object(order: tuple[str, ...], fields: dict, shape: CaptionShape, palette_max: int, **fixed) -> dict:
    """An object whose keys follow `order`; fields not in `fields`/`fixed` are left out."""
    props = {}
    for key in order:
        if key in fixed:
            props[key] = fixed[key]
        elif key == "color_palette":
            if shape.palettes != "none":
                props[key] = _palette(palette_max)
        elif key == "bbox":
            if shape.bboxes:
                props[key] = BBOX
        elif key in fields:
            props[key] = fields[key]
    required = [k for k in props if k != "color_palette" or shape.palettes == "required"]
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


def generation_schema(shape: CaptionShape = CaptionShape()) -> dict:
    """JSON Schema (draft 2020-12) of the captions a decoder may produce for `shape`."""
    texts = {key: _text() for key in ("aesthetics", "lighting", "photo", "medium", "art_style", "desc", "text")}
    elements = [
        _object(ELEMENT_ORDERS[kind], texts, shape, ELEMENT_PALETTE_MAX, type={"const": kind})
        for kind in ELEMENT_ORDERS
    ]
    composition = {
        "type": "object",
        "properties": {"background": _text(),
                       "elements": {"type": "array", "minItems": 1, "maxItems": MAX_ELEMENTS,
                                    "items": {"anyOf": elements}}},
        "required": list(COMPOSITION_ORDER),
        "additionalProperties": False,
    }
    top = {"high_level_description": _text(), "compositional_deconstruction": composition}
    if shape.style:
        styles = [_object(order, texts, shape, STYLE_PALETTE_MAX) for order in (STYLE_ORDER_PHOTO, STYLE_ORDER_ART)]
        top["style_description"] = {"anyOf": styles}
    props = {key: top[key] for key in TOP_LEVEL_ORDER if key in top}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object", "properties": props,
            "required": list(props), "additionalProperties": False}
