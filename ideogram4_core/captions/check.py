"""Check a parsed caption against the schema and report every problem with path, cause and fix.

The rules come from `caption_schema`: JSON Schema errors are translated into plain language, and
the two rules JSON Schema cannot state (key order, min <= max inside a bbox) are checked here.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Iterator

from .issues import Issue, json_path
from .parse import DuplicateKeyDict
from .schema import (BBOX_AXES, CAPTION_VALIDATOR, COMPOSITION_ORDER, ELEMENT_ORDERS, FIELD_HINTS,
                             KNOWN_FOREIGN_KEYS, TOP_LEVEL_ORDER, style_order)

_SURROGATE = re.compile("[\ud800-\udfff]")
_HEX_ANY_CASE = re.compile(r"#[0-9a-fA-F]{6}")
_JSON_TYPES = {"string": "a string", "object": "an object", "array": "a list", "integer": "an integer"}


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number with a fraction", type(None): "null"}.get(type(value), type(value).__name__)


def _colour_fix(value: Any) -> str:
    if isinstance(value, str):
        if _HEX_ANY_CASE.fullmatch(value):
            return f"write it in uppercase: '{value.upper()}' (repair mode does this)."
        short = re.fullmatch(r"#?([0-9a-fA-F])([0-9a-fA-F])([0-9a-fA-F])", value)
        if short:
            return "expand the shorthand: '#" + "".join(c * 2 for c in short.groups()).upper() + "'."
        if re.fullmatch(r"[0-9a-fA-F]{6}", value):
            return f"add the '#': '#{value.upper()}'."
    return "use a 7-character uppercase hex colour such as '#1B1B2F'."


def _translate(err) -> list[Issue]:
    parts = list(err.absolute_path)
    path, inst, kind = json_path(parts), err.instance, err.validator
    last = parts[-1] if parts else None
    in_bbox = "bbox" in parts[-2:]
    if err.schema is False:  # `text` on an obj element; jsonschema reports the element's path
        return [Issue(json_path(parts + ["text"]), "an 'obj' element has a 'text' key; only 'text' elements render text.",
                      "set type to 'text' if this text should appear in the image, otherwise remove 'text'.")]
    if kind == "required":
        return [Issue(json_path(parts + [k]), f"required key '{k}' is missing.", f"add '{k}': {FIELD_HINTS[k]}.")
                for k in err.validator_value if k not in inst]
    if kind == "additionalProperties":
        allowed = list(err.schema.get("properties", {}))
        return [Issue(json_path(parts + [k]),
                      f"unknown key '{k}' ({KNOWN_FOREIGN_KEYS.get(k, 'the model was never trained on it')}).",
                      "remove it (repair mode drops it)." + "".join(
                          f" Did you mean '{m}'?" for m in difflib.get_close_matches(k, allowed, n=1)))
                for k in inst if k not in allowed]
    if kind == "oneOf":
        if not isinstance(inst, dict):
            return []  # the type error already covers it
        if "photo" in inst:
            return [Issue(path, "has both 'photo' and 'art_style'; exactly one is allowed.",
                          "keep 'photo' for photographs (medium 'photograph') or 'art_style' for everything else.")]
        return [Issue(path, "needs exactly one of 'photo' or 'art_style'.",
                      f"add 'photo' ({FIELD_HINTS['photo']}) or 'art_style' ({FIELD_HINTS['art_style']}).")]
    if kind == "type":
        want = _JSON_TYPES.get(err.validator_value, err.validator_value)
        fix = f"make it {want}"
        if in_bbox and isinstance(inst, float) and inst.is_integer():
            fix = f"write it as the integer {int(inst)} (repair mode does this)."
        elif in_bbox and isinstance(inst, float):
            fix = "round to a whole number on the 0..1000 grid" + (
                " (values <= 1 look normalised to 0..1: multiply by 1000)" if abs(inst) <= 1 else "")
        elif last in FIELD_HINTS:
            fix += f": {FIELD_HINTS[last]}"
        return [Issue(path, f"expected {want}, got {_type_name(inst)}.", fix + ("" if fix.endswith(".") else "."))]
    if kind == "enum":
        return [Issue(path, f"element type {inst!r} is not 'obj' or 'text'.", f"use {FIELD_HINTS['type']}.")]
    if kind in ("minItems", "maxItems"):
        if last == "bbox":
            return [Issue(path, f"bbox has {len(inst)} values.", f"use exactly 4: {FIELD_HINTS['bbox']}.")]
        return [Issue(path, f"{len(inst)} colours; at most {err.validator_value} are allowed here.",
                      f"keep the {err.validator_value} most important colours.")]
    if kind == "pattern" or (kind in ("minLength", "maxLength") and "color_palette" in parts[-2:]):
        return [Issue(path, f"{inst!r} is not an uppercase #RRGGBB colour.", _colour_fix(inst))]
    if kind in ("minimum", "maximum"):
        axis = BBOX_AXES[last] if isinstance(last, int) and last < 4 else "value"
        bound = err.validator_value
        return [Issue(path, f"{axis} {inst} is outside 0..1000.", f"clamp it to {bound} (repair mode does this).")]
    return [Issue(path, err.message, "see docs/captions.md for the caption schema.")]


def _order_issue(obj: Any, order: tuple[str, ...] | None, parts: list) -> list[Issue]:
    if not isinstance(obj, dict) or order is None:
        return []
    present = [k for k in obj if k in order]
    expected = [k for k in order if k in obj]
    if present == expected:
        return []
    return [Issue(json_path(parts), f"key order is {present}; the model was trained on {expected}.",
                  "reorder the keys (repair mode does this).")]


def _elements(caption: dict) -> Iterator[tuple[list, dict]]:
    comp = caption.get("compositional_deconstruction")
    elements = comp.get("elements") if isinstance(comp, dict) else None
    for i, elem in enumerate(elements if isinstance(elements, list) else []):
        if isinstance(elem, dict):
            yield ["compositional_deconstruction", "elements", i], elem


def _structure_issues(caption: dict) -> list[Issue]:
    issues = _order_issue(caption, TOP_LEVEL_ORDER, [])
    style = caption.get("style_description")
    if isinstance(style, dict):
        issues += _order_issue(style, style_order(style), ["style_description"])
    issues += _order_issue(caption.get("compositional_deconstruction"), COMPOSITION_ORDER,
                           ["compositional_deconstruction"])
    for parts, elem in _elements(caption):
        kind = elem.get("type")
        issues += _order_issue(elem, ELEMENT_ORDERS.get(kind) if isinstance(kind, str) else None, parts)
        box = elem.get("bbox")
        if isinstance(box, list) and len(box) == 4 and all(type(v) is int for v in box):
            for lo, hi in ((0, 2), (1, 3)):
                if box[lo] > box[hi]:
                    swapped = list(box)
                    swapped[lo], swapped[hi] = box[hi], box[lo]
                    issues.append(Issue(json_path(parts + ["bbox"]),
                                        f"{BBOX_AXES[lo]} ({box[lo]}) > {BBOX_AXES[hi]} ({box[hi]}).",
                                        f"swap them: {swapped}; the order is [y_min, x_min, y_max, x_max] "
                                        "(repair mode does this)."))
    return issues


def _advice(caption: dict) -> list[Issue]:
    """Allowed by the schema, but worth a warning."""
    out = []
    if "high_level_description" not in caption:
        out.append(Issue("$.high_level_description", "no high-level description (optional, strongly recommended).",
                         f"add {FIELD_HINTS['high_level_description']}.", severity="warning"))
    style = caption.get("style_description")
    for key, value in style.items() if isinstance(style, dict) else ():
        if isinstance(value, str) and not value.strip():  # e.g. builders that emit blank style fields
            out.append(Issue(f"$.style_description.{key}", f"'{key}' is empty.",
                             f"fill it in ({FIELD_HINTS.get(key, 'a description')}).", severity="warning"))
    comp = caption.get("compositional_deconstruction")
    if isinstance(comp, dict) and isinstance(comp.get("background"), str) and not comp["background"].strip():
        out.append(Issue("$.compositional_deconstruction.background", "background is empty.",
                         "describe the backdrop behind the elements.", severity="warning"))
    if isinstance(comp, dict) and comp.get("elements") == []:
        out.append(Issue("$.compositional_deconstruction.elements", "there are no elements.",
                         "add an element for each main subject or piece of text.", severity="warning"))
    for parts, elem in _elements(caption):
        if elem.get("type") == "text" and elem.get("text") == "":
            out.append(Issue(json_path(parts + ["text"]), "text element with empty text.",
                             "write the literal text to render, or make it an 'obj' element.", severity="warning"))
        box = elem.get("bbox")
        if isinstance(box, list) and len(box) == 4 and all(type(v) is int for v in box) \
                and (box[0] == box[2] or box[1] == box[3]):
            out.append(Issue(json_path(parts + ["bbox"]), f"bbox {box} has zero area.",
                             "give the box a height and a width, or remove the bbox.", severity="warning"))
    return out


def _walk(value: Any, parts: list) -> Iterator[tuple[list, Any]]:
    # Iterative: depth is bounded by the parser, but a stack keeps this safe for any input.
    stack = [(parts, value)]
    while stack:
        here, node = stack.pop()
        yield here, node
        if isinstance(node, dict):
            stack.extend((here + [k], v) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((here + [i], v) for i, v in enumerate(node))


def encoding_issues(caption: Any) -> list[Issue]:
    out = []
    for parts, node in _walk(caption, []):
        if isinstance(node, DuplicateKeyDict) and node.duplicate_keys:
            out += [Issue(json_path(parts + [k]), f"key '{k}' appears more than once; only the last value is kept.",
                          "keep one of them.") for k in node.duplicate_keys]
        texts = [node] if isinstance(node, str) else list(node) if isinstance(node, dict) else []
        if any(_SURROGATE.search(t) for t in texts):
            out.append(Issue(json_path(parts), "contains a lone UTF-16 surrogate (a broken \\uD8xx escape).",
                             "write the character literally, or escape both halves of the pair."))
    return out


def check_caption(caption: Any) -> list[Issue]:
    """Every problem in a parsed caption, in a stable order. Does not change the caption."""
    issues = encoding_issues(caption)
    if not isinstance(caption, dict):
        hint = "pass exactly one caption object, not a list." if isinstance(caption, list) else \
            "the caption must be a JSON object {...}."
        if isinstance(caption, str) and caption.lstrip().startswith("{"):
            hint = "the caption was JSON-encoded twice; decode it once."
        return issues + [Issue("$", f"expected a JSON object, got {_type_name(caption)}.", hint)]
    for err in CAPTION_VALIDATOR.iter_errors(caption):
        issues += _translate(err)
    return issues + _structure_issues(caption) + _advice(caption)

