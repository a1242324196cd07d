"""The Ideogram 4 structured-caption schema: the one place for its rules (spec §G.3).

The model was trained only on JSON captions of this shape, serialised compactly with a fixed key
order. Everything a JSON Schema can say lives in `CAPTION_SCHEMA`; key order cannot be expressed
in JSON Schema, so the canonical orders sit beside it as tuples. The verifier, the repairer and the
builder all read these names and nothing else.
"""

from __future__ import annotations

from jsonschema import Draft202012Validator, validators

# Key orders the model was trained on. Optional keys are left out when absent; present keys must
# keep their relative order.
TOP_LEVEL_ORDER = ("high_level_description", "style_description", "compositional_deconstruction")
STYLE_ORDER_PHOTO = ("aesthetics", "lighting", "photo", "medium", "color_palette")
STYLE_ORDER_ART = ("aesthetics", "lighting", "medium", "art_style", "color_palette")
COMPOSITION_ORDER = ("background", "elements")
ELEMENT_ORDERS = {
    "obj": ("type", "bbox", "desc", "color_palette"),
    "text": ("type", "bbox", "text", "desc", "color_palette"),
}
ELEMENT_TYPES = tuple(ELEMENT_ORDERS)

STYLE_KEYS = frozenset(STYLE_ORDER_PHOTO) | frozenset(STYLE_ORDER_ART)
ELEMENT_KEYS = frozenset(ELEMENT_ORDERS["text"])

# bbox is [y_min, x_min, y_max, x_max] on a 0..1000 grid per axis, origin top-left.
BBOX_MIN, BBOX_MAX = 0, 1000
BBOX_AXES = ("y_min", "x_min", "y_max", "x_max")
STYLE_PALETTE_MAX = 16
ELEMENT_PALETTE_MAX = 5
# Uppercase only: the official verifier rejects "#1b1b2f" and "#FFF".
HEX_COLOR_PATTERN = "^#[0-9A-F]{6}$"

# Keys that tools are known to emit but the model never saw; repair mode drops them.
# `aspect_ratio` is part of the magic prompt's raw output contract and is removed before encoding.
KNOWN_FOREIGN_KEYS = {"aspect_ratio": "the magic prompt emits it, but the pipeline removes it before encoding"}

# Short, human descriptions of each field, used in "how to fix" hints.
FIELD_HINTS = {
    "high_level_description": "a one- or two-sentence summary of the whole image",
    "style_description": "an object with aesthetics, lighting, medium and photo or art_style",
    "compositional_deconstruction": 'an object {"background": "...", "elements": [...]}',
    "aesthetics": 'aesthetic keywords, e.g. "moody, cinematic"',
    "lighting": 'a lighting description, e.g. "golden hour, rim light"',
    "photo": 'camera/lens details, e.g. "35mm, f/1.4, bokeh"',
    "medium": '"photograph", "illustration", "3d_render", "painting", "graphic_design", ...',
    "art_style": 'an art style, e.g. "flat vector illustration, bold outlines"',
    "background": "a description of the backdrop behind the elements",
    "elements": "a list of element objects (may be empty)",
    "type": '"obj" for things, "text" for lettering to render',
    "desc": "a description of the element",
    "text": "the literal text to render (use \\n for line breaks)",
    "bbox": "[y_min, x_min, y_max, x_max], integers 0..1000",
    "color_palette": 'uppercase "#RRGGBB" strings',
}


def _string() -> dict:
    return {"type": "string"}


def _palette(max_items: int) -> dict:
    # The length bounds matter: Python's re.search lets "$" match before a trailing "\n".
    return {"type": "array", "maxItems": max_items,
            "items": {"type": "string", "minLength": 7, "maxLength": 7, "pattern": HEX_COLOR_PATTERN}}


def _type_is(kind: str) -> dict:
    return {"properties": {"type": {"const": kind}}, "required": ["type"]}


BBOX_SCHEMA = {
    "type": "array", "minItems": 4, "maxItems": 4,
    "items": {"type": "integer", "minimum": BBOX_MIN, "maximum": BBOX_MAX},
}

ELEMENT_SCHEMA = {
    "type": "object",
    "required": ["type", "desc"],
    "properties": {
        "type": {"enum": list(ELEMENT_TYPES)},
        "bbox": BBOX_SCHEMA,
        "text": _string(),
        "desc": _string(),
        "color_palette": _palette(ELEMENT_PALETTE_MAX),
    },
    "additionalProperties": False,
    "allOf": [
        {"if": _type_is("text"), "then": {"required": ["text"]}},
        # An obj element never carried `text` in training.
        {"if": _type_is("obj"), "then": {"properties": {"text": False}}},
    ],
}

STYLE_SCHEMA = {
    "type": "object",
    "required": ["aesthetics", "lighting", "medium"],
    "properties": {key: _string() for key in sorted(STYLE_KEYS - {"color_palette"})}
    | {"color_palette": _palette(STYLE_PALETTE_MAX)},
    "additionalProperties": False,
    # Exactly one of photo / art_style: with both, both branches match and oneOf fails.
    "oneOf": [{"required": ["photo"]}, {"required": ["art_style"]}],
}

COMPOSITION_SCHEMA = {
    "type": "object",
    "required": list(COMPOSITION_ORDER),
    "properties": {"background": _string(), "elements": {"type": "array", "items": ELEMENT_SCHEMA}},
    "additionalProperties": False,
}

CAPTION_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Ideogram 4 structured caption",
    "type": "object",
    "required": ["compositional_deconstruction"],
    "properties": {
        "high_level_description": _string(),
        "style_description": STYLE_SCHEMA,
        "compositional_deconstruction": COMPOSITION_SCHEMA,
    },
    "additionalProperties": False,
}


def _is_strict_int(_checker, value) -> bool:
    # JSON Schema counts 5.0 as an integer and Python counts True as one; the model saw neither.
    return isinstance(value, int) and not isinstance(value, bool)


_StrictIntValidator = validators.extend(
    Draft202012Validator,
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_strict_int),
)
CAPTION_VALIDATOR = _StrictIntValidator(CAPTION_SCHEMA)


def style_order(style: dict) -> tuple[str, ...] | None:
    """Canonical key order for a style block, or None when it has both or neither of photo/art_style."""
    has_photo, has_art = "photo" in style, "art_style" in style
    if has_photo == has_art:
        return None
    return STYLE_ORDER_PHOTO if has_photo else STYLE_ORDER_ART
