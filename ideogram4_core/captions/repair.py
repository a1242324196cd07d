"""Safe, reported repairs of a parsed caption (repair mode only).

"Safe" means the meaning the user wrote is kept: keys are reordered, hex colours uppercased, bbox
values clamped into 0..1000 or swapped when min > max, integral floats made ints, and keys the
model never saw are dropped. Anything that needs a guess (a missing field, an unknown element
type, a colour that is not hex, both photo and art_style) is left for the verifier to report.
The input is never mutated: ComfyUI may cache and reuse the object it handed in.
"""

from __future__ import annotations

import re
from typing import Any

from .issues import Issue, json_path
from .schema import (BBOX_AXES, BBOX_MAX, BBOX_MIN, COMPOSITION_ORDER, ELEMENT_KEYS, ELEMENT_ORDERS,
                             KNOWN_FOREIGN_KEYS, STYLE_KEYS, TOP_LEVEL_ORDER, style_order)

_HEX_ANY_CASE = re.compile(r"#[0-9a-fA-F]{6}")


def _reordered(obj: dict, order: tuple[str, ...]) -> dict:
    """Known keys in canonical order, then any others in their original order."""
    out = {key: obj[key] for key in order if key in obj}
    out.update((key, value) for key, value in obj.items() if key not in out)
    return out


def _clean_keys(obj: dict, known: frozenset | tuple, path: list, issues: list[Issue], keep=()) -> dict:
    out = {}
    for key, value in obj.items():
        if key in known or key in keep:
            out[key] = value
            continue
        why = KNOWN_FOREIGN_KEYS.get(key, "the model was never trained on it")
        issues.append(Issue(json_path(path + [key]), f"unknown key '{key}' ({why}).",
                            "dropped the key.", repaired=True))
    return out


def _order(obj: dict, order: tuple[str, ...], path: list, issues: list[Issue]) -> dict:
    out = _reordered(obj, order)
    if list(out) != list(obj):
        issues.append(Issue(json_path(path), f"key order was {list(obj)}.",
                            f"reordered to {list(out)}.", repaired=True))
    return out


def _palette(value: Any, path: list, issues: list[Issue]) -> Any:
    if not isinstance(value, list):
        return value
    out = []
    for i, colour in enumerate(value):
        if isinstance(colour, str) and _HEX_ANY_CASE.fullmatch(colour) and colour != colour.upper():
            issues.append(Issue(json_path(path + [i]), f"colour '{colour}' is not uppercase.",
                                f"uppercased to '{colour.upper()}'.", repaired=True))
            colour = colour.upper()
        out.append(colour)
    return out


def _bbox(value: Any, path: list, issues: list[Issue]) -> Any:
    if not isinstance(value, list) or len(value) != 4:
        return value
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return value
    if not all(isinstance(v, int) or v.is_integer() for v in value):
        return value  # 12.5 needs a rounding choice, and 0..1 floats need scaling: not safe
    box = [int(v) for v in value]
    if any(isinstance(v, float) for v in value):
        issues.append(Issue(json_path(path), f"bbox {value} holds floats.", f"converted to integers {box}.",
                            repaired=True))
    clamped = [min(BBOX_MAX, max(BBOX_MIN, v)) for v in box]
    if clamped != box:
        issues.append(Issue(json_path(path), f"bbox {box} has values outside {BBOX_MIN}..{BBOX_MAX}.",
                            f"clamped to {clamped}.", repaired=True))
    y0, x0, y1, x1 = clamped
    for lo, hi, a, b in ((0, 2, y0, y1), (1, 3, x0, x1)):
        if a > b:
            clamped[lo], clamped[hi] = b, a
            issues.append(Issue(json_path(path), f"{BBOX_AXES[lo]} ({a}) > {BBOX_AXES[hi]} ({b}).",
                                f"swapped them: bbox is now {clamped}.", repaired=True))
    return clamped


def _element(elem: Any, path: list, issues: list[Issue]) -> Any:
    if not isinstance(elem, dict):
        return elem
    # `text` on an obj element stays: dropping it would lose text the user may want rendered.
    elem = _clean_keys(elem, ELEMENT_KEYS, path, issues)
    if "bbox" in elem:
        elem["bbox"] = _bbox(elem["bbox"], path + ["bbox"], issues)
    if "color_palette" in elem:
        elem["color_palette"] = _palette(elem["color_palette"], path + ["color_palette"], issues)
    order = ELEMENT_ORDERS.get(elem.get("type")) if isinstance(elem.get("type"), str) else None
    return _order(elem, order, path, issues) if order else elem


def _style(style: Any, path: list, issues: list[Issue]) -> Any:
    if not isinstance(style, dict):
        return style
    style = _clean_keys(style, STYLE_KEYS, path, issues)
    if "color_palette" in style:
        style["color_palette"] = _palette(style["color_palette"], path + ["color_palette"], issues)
    order = style_order(style)
    return _order(style, order, path, issues) if order else style


def _composition(comp: Any, path: list, issues: list[Issue]) -> Any:
    if not isinstance(comp, dict):
        return comp
    comp = _clean_keys(comp, COMPOSITION_ORDER, path, issues)
    if isinstance(comp.get("elements"), list):
        comp["elements"] = [_element(e, path + ["elements", i], issues) for i, e in enumerate(comp["elements"])]
    return _order(comp, COMPOSITION_ORDER, path, issues)


def repair_caption(caption: Any) -> tuple[Any, list[Issue]]:
    """Return a repaired copy of `caption` and one repaired Issue per change made."""
    issues: list[Issue] = []
    if not isinstance(caption, dict):
        return caption, issues
    root = _clean_keys(caption, TOP_LEVEL_ORDER, [], issues)
    if "style_description" in root:
        root["style_description"] = _style(root["style_description"], ["style_description"], issues)
    if "compositional_deconstruction" in root:
        root["compositional_deconstruction"] = _composition(
            root["compositional_deconstruction"], ["compositional_deconstruction"], issues)
    return _order(root, TOP_LEVEL_ORDER, [], issues), issues
