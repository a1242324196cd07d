"""The caption schema itself: the rules of spec §G.3, checked directly against the validator."""

import copy
import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from ideogram4_core.captions.schema import (CAPTION_SCHEMA, CAPTION_VALIDATOR, COMPOSITION_ORDER, ELEMENT_ORDERS,
                                           ELEMENT_PALETTE_MAX, STYLE_ORDER_ART, STYLE_ORDER_PHOTO,
                                           STYLE_PALETTE_MAX, TOP_LEVEL_ORDER, style_order)

FIXTURES = Path(__file__).parent / "fixtures" / "captions"
GUIDE = json.loads((FIXTURES / "prompting_guide.json").read_text(encoding="utf-8"))["examples"]


def _minimal():
    return {"compositional_deconstruction": {"background": "a wall", "elements": []}}


def _with_element(**element):
    cap = _minimal()
    cap["compositional_deconstruction"]["elements"].append(element)
    return cap


def _photo_style(**extra):
    return {"aesthetics": "a", "lighting": "l", "photo": "p", "medium": "photograph", **extra}


def _errors(caption):
    return [(list(e.absolute_path), e.validator) for e in CAPTION_VALIDATOR.iter_errors(caption)]


def test_schema_is_a_valid_draft_2020_12_document():
    Draft202012Validator.check_schema(CAPTION_SCHEMA)


@pytest.mark.parametrize("name", sorted(GUIDE))
def test_prompting_guide_examples_are_valid(name):
    assert _errors(GUIDE[name]) == []


def test_key_orders_match_the_official_tables():
    assert TOP_LEVEL_ORDER == ("high_level_description", "style_description", "compositional_deconstruction")
    assert STYLE_ORDER_PHOTO == ("aesthetics", "lighting", "photo", "medium", "color_palette")
    assert STYLE_ORDER_ART == ("aesthetics", "lighting", "medium", "art_style", "color_palette")
    assert COMPOSITION_ORDER == ("background", "elements")
    assert ELEMENT_ORDERS == {"obj": ("type", "bbox", "desc", "color_palette"),
                              "text": ("type", "bbox", "text", "desc", "color_palette")}
    # The schema's property sets agree with the orders, so the two cannot drift apart.
    assert set(CAPTION_SCHEMA["properties"]) == set(TOP_LEVEL_ORDER)
    comp = CAPTION_SCHEMA["properties"]["compositional_deconstruction"]
    assert set(comp["properties"]) == set(COMPOSITION_ORDER)
    assert set(comp["properties"]["elements"]["items"]["properties"]) == set(ELEMENT_ORDERS["text"])
    style = CAPTION_SCHEMA["properties"]["style_description"]
    assert set(style["properties"]) == set(STYLE_ORDER_PHOTO) | set(STYLE_ORDER_ART)


def test_style_order_depends_on_photo_or_art_style():
    assert style_order({"photo": ""}) == STYLE_ORDER_PHOTO
    assert style_order({"art_style": ""}) == STYLE_ORDER_ART
    assert style_order({}) is None
    assert style_order({"photo": "", "art_style": ""}) is None


def test_minimal_caption_is_valid_and_composition_is_required():
    assert _errors(_minimal()) == []
    assert _errors({"high_level_description": "x"}) == [([], "required")]
    assert ([["compositional_deconstruction"], "required"]) in [list(e) for e in
                                                                _errors({"compositional_deconstruction": {}})]


@pytest.mark.parametrize("missing", ["background", "elements"])
def test_background_and_elements_are_required(missing):
    cap = _minimal()
    del cap["compositional_deconstruction"][missing]
    assert _errors(cap) == [(["compositional_deconstruction"], "required")]


@pytest.mark.parametrize("where, key", [([], "aspect_ratio"), (["compositional_deconstruction"], "notes"),
                                        (["style_description"], "mood")])
def test_unknown_keys_are_rejected_at_every_level(where, key):
    cap = _minimal()
    cap["style_description"] = _photo_style()
    target = cap
    for part in where:
        target = target[part]
    target[key] = "x"
    assert _errors(cap) == [(where, "additionalProperties")]


def test_unknown_element_key_is_rejected():
    assert _errors(_with_element(type="obj", desc="d", label="x")) == [
        (["compositional_deconstruction", "elements", 0], "additionalProperties")]


@pytest.mark.parametrize("style, ok", [
    (_photo_style(), True),
    ({"aesthetics": "a", "lighting": "l", "medium": "illustration", "art_style": "flat"}, True),
    (_photo_style(art_style="flat"), False),  # both
    ({"aesthetics": "a", "lighting": "l", "medium": "m"}, False),  # neither
    ({"lighting": "l", "photo": "p", "medium": "m"}, False),  # aesthetics missing
    ({"aesthetics": "a", "photo": "p", "medium": "m"}, False),  # lighting missing
    ({"aesthetics": "a", "lighting": "l", "photo": "p"}, False),  # medium missing
    (_photo_style(lighting=3), False),
    ("photo", False),
])
def test_style_block_rules(style, ok):
    cap = _minimal()
    cap["style_description"] = style
    assert (_errors(cap) == []) is ok


@pytest.mark.parametrize("n, ok", [(0, True), (STYLE_PALETTE_MAX, True), (STYLE_PALETTE_MAX + 1, False)])
def test_style_palette_holds_at_most_16(n, ok):
    cap = _minimal()
    cap["style_description"] = _photo_style(color_palette=["#A0A0A0"] * n)
    assert (_errors(cap) == []) is ok


@pytest.mark.parametrize("n, ok", [(1, True), (ELEMENT_PALETTE_MAX, True), (ELEMENT_PALETTE_MAX + 1, False)])
def test_element_palette_holds_at_most_5(n, ok):
    assert (_errors(_with_element(type="obj", desc="d", color_palette=["#123456"] * n)) == []) is ok


@pytest.mark.parametrize("colour, ok", [("#1B1B2F", True), ("#000000", True), ("#1b1b2f", False),
                                        ("#FFF", False), ("1B1B2F", False), ("#1B1B2FF", False),
                                        ("#GGGGGG", False), (" #1B1B2F", False), ("#1B1B2F\n", False),
                                        (123456, False)])
def test_colours_are_uppercase_rrggbb(colour, ok):
    assert (_errors(_with_element(type="obj", desc="d", color_palette=[colour])) == []) is ok


@pytest.mark.parametrize("bbox, ok", [
    ([0, 0, 1000, 1000], True), ([10, 20, 30, 40], True), ([500, 500, 500, 500], True),
    ([-1, 0, 10, 10], False), ([0, 0, 1001, 10], False), ([0, 0, 10], False), ([0, 0, 10, 10, 10], False),
    ([0.0, 0, 10, 10], False),  # the model saw integers only
    ([True, 0, 10, 10], False),  # a boolean is not an integer here, unlike Python's isinstance
    (["0", 0, 10, 10], False), ("0,0,10,10", False), (None, False),
])
def test_bbox_is_four_integers_on_the_0_1000_grid(bbox, ok):
    assert (_errors(_with_element(type="obj", bbox=bbox, desc="d")) == []) is ok


def test_min_max_order_is_left_to_the_verifier():
    # JSON Schema cannot compare array items; caption_check reports y_min > y_max (see verifier tests).
    assert _errors(_with_element(type="obj", bbox=[900, 0, 100, 10], desc="d")) == []


@pytest.mark.parametrize("element, ok", [
    ({"type": "obj", "desc": "d"}, True),
    ({"type": "text", "text": "HI", "desc": "d"}, True),
    ({"type": "text", "desc": "d"}, False),  # text elements carry `text`
    ({"type": "obj", "text": "HI", "desc": "d"}, False),  # obj elements never do
    ({"type": "obj"}, False),  # desc is required (the official key order lists it)
    ({"desc": "d"}, False),
    ({"type": "object", "desc": "d"}, False),
    ({"type": "TEXT", "text": "x", "desc": "d"}, False),
    ({"type": "text", "text": 5, "desc": "d"}, False),
    ("a cat", False),
])
def test_element_rules(element, ok):
    cap = _minimal()
    cap["compositional_deconstruction"]["elements"].append(element)
    assert (_errors(cap) == []) is ok


@pytest.mark.parametrize("field", ["high_level_description", "background"])
def test_descriptions_must_be_strings(field):
    cap = _minimal()
    if field == "background":
        cap["compositional_deconstruction"]["background"] = ["a", "wall"]
    else:
        cap[field] = {"text": "x"}
    assert len(_errors(cap)) == 1


def test_schema_does_not_depend_on_key_order():
    # Order is a separate rule (caption_check); a reordered valid caption is still schema-valid.
    cap = copy.deepcopy(GUIDE["golden_retriever_photo"])
    reordered = {k: cap[k] for k in reversed(list(cap))}
    assert _errors(reordered) == []
