"""The verifier: modes, repairs, text-level fixes, refusals, and captions from other tools."""

import copy
import importlib.resources
import json
from pathlib import Path

import pytest

from ideogram4_core.captions.issues import CaptionError, Issue, format_issues
from ideogram4_core.captions.parse import MAX_CAPTION_BYTES
from ideogram4_core.captions.verify import verify_caption

FIXTURES = Path(__file__).parent / "fixtures" / "captions"
GUIDE = json.loads((FIXTURES / "prompting_guide.json").read_text(encoding="utf-8"))["examples"]
FOREIGN = json.loads((FIXTURES / "foreign_tools.json").read_text(encoding="utf-8"))["cases"]


def compact(obj):
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def minimal(**top):
    return {**top, "compositional_deconstruction": {"background": "a wall", "elements": []}}


def with_element(**element):
    cap = {"high_level_description": "h", "compositional_deconstruction": {"background": "b", "elements": [element]}}
    return cap


def refused(caption, **kw) -> list[Issue]:
    with pytest.raises(CaptionError) as info:
        verify_caption(caption, **kw)
    return info.value.issues


def blocking_paths(issues):
    return [i.path for i in issues if i.blocking]


# --- official and third-party captions --------------------------------------------------------

@pytest.mark.parametrize("name", sorted(GUIDE))
@pytest.mark.parametrize("mode", ["strict", "repair", "warn"])
def test_prompting_guide_examples_pass_unchanged(name, mode):
    text = compact(GUIDE[name])
    result = verify_caption(text, mode=mode)
    assert result.caption == text  # already canonical: nothing to change
    assert [i for i in result.issues if i.severity != "warning"] == []
    assert result.data == GUIDE[name]


def test_compact_format_matches_the_official_serialisation():
    pretty = json.dumps(GUIDE["full_example_f1"], indent=2)  # ensure_ascii=True: \u2122, \u00a9
    result = verify_caption(pretty, mode="strict", caption_format="compact")
    assert result.caption == json.dumps(GUIDE["full_example_f1"], separators=(",", ":"), ensure_ascii=False)
    assert "™" in result.caption and "\\u2122" not in result.caption
    assert "compact" in result.report()


def _template_captions(template: str) -> list[str]:
    """Caption strings inside an installed ComfyUI workflow template (found at run time)."""
    path = importlib.resources.files("comfyui_workflow_templates_json") / "templates" / template
    found, stack = [], [json.loads(path.read_text(encoding="utf-8"))]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, str) and node.lstrip().startswith("{") and "compositional_deconstruction" in node:
            try:
                value = json.loads(node)
            except ValueError:
                continue
            if isinstance(value, dict):
                found.append(node)
    return found


def test_comfyui_t2i_template_default_caption_passes_strict():
    captions = _template_captions("image_ideogram4_t2i.json")
    assert len(captions) == 1, "the template should carry exactly one default caption"
    result = verify_caption(captions[0], mode="strict")
    assert result.data == json.loads(captions[0])  # only whitespace may change
    assert all(i.severity in ("info", "warning") for i in result.issues)


def test_comfyui_int8_template_caption_needs_only_aspect_ratio_dropped():
    # Its default caption is raw magic-prompt output that still carries `aspect_ratio`.
    (caption,) = _template_captions("image_ideogram4_t2i_int8.json")
    assert blocking_paths(refused(caption, mode="strict")) == ["$.aspect_ratio"]
    expected = json.loads(caption)
    del expected["aspect_ratio"]
    assert verify_caption(caption, mode="repair").caption == compact(expected)


@pytest.mark.parametrize("name", sorted(FOREIGN))
def test_captions_from_other_tools(name):
    case = FOREIGN[name]
    repaired = verify_caption(case["input"], mode="repair")
    assert repaired.ok and json.loads(repaired.caption) == repaired.data
    if case["expect"] == "valid":
        given = case["input"] if isinstance(case["input"], str) else compact(case["input"])
        assert verify_caption(case["input"], mode="strict").caption == given  # encoded as written
        # Repair mode changes a valid caption only to write \uXXXX escapes literally, and says so.
        escaped = any("\\uXXXX" in i.message for i in repaired.issues)
        assert (repaired.caption == given) is not escaped
        assert ("encoded, not the text as written" in repaired.report()) is escaped
    else:
        assert set(blocking_paths(refused(case["input"], mode="strict"))) == set(case["repairs"])
        fixed = {i.path for i in repaired.issues if i.repaired and i.severity == "error"}
        assert fixed == set(case["repairs"])


def test_magic_prompt_raw_output_loses_only_aspect_ratio():
    raw = json.loads(FOREIGN["magic_prompt_raw_llm_output"]["input"])
    result = verify_caption(compact(raw), mode="repair")
    del raw["aspect_ratio"]
    assert result.caption == compact(raw)
    assert blocking_paths(refused(FOREIGN["magic_prompt_raw_llm_output"]["input"], mode="strict")) == ["$.aspect_ratio"]


def test_comfy_core_dict_is_not_mutated_and_tuples_are_accepted():
    core = copy.deepcopy(FOREIGN["comfy_core_dict"]["input"])
    core["compositional_deconstruction"]["elements"][0]["bbox"] = (100, 250, 900, 750)
    core["compositional_deconstruction"]["elements"].insert(0, {"desc": "d", "type": "obj"})
    before = copy.deepcopy(core)
    result = verify_caption(core, mode="repair")
    assert core == before
    assert result.data["compositional_deconstruction"]["elements"][1]["bbox"] == [100, 250, 900, 750]


def test_blank_style_fields_from_builders_are_warned_about():
    result = verify_caption(FOREIGN["kjnodes_compact"]["input"], mode="strict")
    assert {i.path for i in result.issues if i.severity == "warning"} >= {
        "$.style_description.aesthetics", "$.style_description.lighting", "$.style_description.medium"}


# --- modes ------------------------------------------------------------------------------------

BROKEN = {"compositional_deconstruction": {"elements": [{"desc": "d", "type": "obj", "bbox": [900, -5, 100, 1200],
                                                          "color_palette": ["#abcdef"]}],
                                           "background": "b"},
          "aspect_ratio": "1:1", "high_level_description": "h"}


def test_strict_refuses_and_lists_every_problem():
    issues = refused(compact(BROKEN), mode="strict")
    paths = blocking_paths(issues)
    assert "$.aspect_ratio" in paths
    assert "$.compositional_deconstruction.elements[0].bbox[1]" in paths  # -5
    assert "$.compositional_deconstruction.elements[0].bbox[3]" in paths  # 1200
    assert "$.compositional_deconstruction.elements[0].bbox" in paths  # y_min > y_max
    assert "$.compositional_deconstruction.elements[0].color_palette[0]" in paths
    assert {"$", "$.compositional_deconstruction", "$.compositional_deconstruction.elements[0]"} <= set(paths)
    assert all(i.fix for i in issues)


def test_repair_applies_only_safe_repairs_and_reports_each():
    result = verify_caption(compact(BROKEN), mode="repair")
    assert json.loads(result.caption) == {
        "high_level_description": "h",
        "compositional_deconstruction": {"background": "b", "elements": [
            {"type": "obj", "bbox": [100, 0, 900, 1000], "desc": "d", "color_palette": ["#ABCDEF"]}]}}
    assert list(json.loads(result.caption)) == ["high_level_description", "compositional_deconstruction"]
    repairs = [i for i in result.issues if i.repaired]
    messages = " ".join(i.message for i in repairs)
    for expected in ("aspect_ratio", "outside 0..1000", "y_min (900) > y_max (100)", "not uppercase", "key order"):
        assert expected in messages
    assert result.ok


def test_warn_passes_text_through_untouched_with_the_same_findings():
    text = compact(BROKEN)
    result = verify_caption(text, mode="warn")
    assert result.caption == text
    assert not result.ok
    assert blocking_paths(result.issues) == blocking_paths(refused(text, mode="strict"))


def test_repair_is_idempotent_and_its_output_passes_strict():
    once = verify_caption(compact(BROKEN), mode="repair").caption
    again = verify_caption(once, mode="repair")
    assert again.caption == once
    assert verify_caption(once, mode="strict").caption == once


@pytest.mark.parametrize("caption, path", [
    (with_element(type="text", desc="d"), "$.compositional_deconstruction.elements[0].text"),
    (with_element(type="obj", text="SALE", desc="d"), "$.compositional_deconstruction.elements[0].text"),
    (with_element(type="object", desc="d"), "$.compositional_deconstruction.elements[0].type"),
    (with_element(type="obj", bbox=[0.1, 0.2, 0.5, 0.6], desc="d"), "$.compositional_deconstruction.elements[0].bbox[0]"),
    (with_element(type="obj", desc="d", color_palette=["#FFF"]), "$.compositional_deconstruction.elements[0].color_palette[0]"),
    (with_element(type="obj", desc="d", color_palette=["#000000"] * 6), "$.compositional_deconstruction.elements[0].color_palette"),
    (minimal(style_description={"aesthetics": "a", "lighting": "l", "medium": "m", "photo": "p", "art_style": "s"}),
     "$.style_description"),
    ({"high_level_description": "x"}, "$.compositional_deconstruction"),
    ({"compositional_deconstruction": {"elements": []}}, "$.compositional_deconstruction.background"),
])
def test_unsafe_problems_survive_repair(caption, path):
    issues = refused(caption, mode="repair")
    assert path in blocking_paths(issues)


def test_integral_float_bbox_is_repaired_but_fractional_is_not():
    ok = verify_caption(with_element(type="obj", bbox=[10.0, 20.0, 30.0, 40.0], desc="d"), mode="repair")
    assert ok.data["compositional_deconstruction"]["elements"][0]["bbox"] == [10, 20, 30, 40]
    issues = refused(with_element(type="obj", bbox=[10.5, 20, 30, 40], desc="d"), mode="repair")
    assert "round" in next(i.fix for i in issues if i.blocking)


def test_normalised_0_1_bbox_gets_a_scaling_hint():
    issues = refused(with_element(type="obj", bbox=[0.1, 0.2, 0.5, 0.6], desc="d"), mode="strict")
    assert any("multiply by 1000" in i.fix for i in issues)


@pytest.mark.parametrize("bad_mode", [dict(mode="fix"), dict(plain_text="drop"), dict(caption_format="pretty")])
def test_unknown_options_are_rejected(bad_mode):
    with pytest.raises(ValueError):
        verify_caption("{}", **bad_mode)


# --- what reaches the text encoder (caption_format) ---------------------------------------------

PRETTY = "\n" + json.dumps(GUIDE["full_example_f1"], indent=4, ensure_ascii=False) + "\n\n"  # as people type it
REWRITTEN = "encoded, not the text as written"


@pytest.mark.parametrize("mode", ["strict", "repair", "warn"])
def test_a_valid_pretty_printed_caption_is_encoded_byte_for_byte(mode):
    result = verify_caption(PRETTY, mode=mode)
    assert result.caption == PRETTY  # whitespace, newlines and all: what both references tokenize
    assert result.caption.encode("utf-8") == PRETTY.encode("utf-8")
    assert result.issues == [] and result.report() == "no issues"
    assert result.data == GUIDE["full_example_f1"]


def test_a_repaired_pretty_caption_is_re_serialised_and_reported():
    broken = copy.deepcopy(GUIDE["full_example_f1"])
    box = broken["compositional_deconstruction"]["elements"][-1]["bbox"]
    box[0], box[2] = box[2], box[0]  # y_min > y_max
    broken = {"aspect_ratio": "1:1", **broken}
    result = verify_caption(json.dumps(broken, indent=2, ensure_ascii=False), mode="repair")
    assert result.caption == compact(GUIDE["full_example_f1"])
    report = result.report()
    assert "aspect_ratio" in report and "> y_max" in report and REWRITTEN in report
    note = next(i for i in result.issues if REWRITTEN in i.message)
    assert note.severity == "info" and note.repaired and not note.blocking


@pytest.mark.parametrize("text, repair", [
    ("```json\n" + PRETTY + "```", "fence"),
    (PRETTY.replace("\n        ]\n    }\n}", "\n        ],\n    }\n}"), "trailing comma"),
])
def test_text_level_repairs_also_re_serialise(text, repair):
    assert text != PRETTY
    result = verify_caption(text, mode="repair")
    assert result.caption == compact(GUIDE["full_example_f1"])
    assert repair in result.report() and REWRITTEN in result.report()


def test_compact_is_an_explicit_choice_and_says_what_it_changed():
    result = verify_caption(PRETTY, mode="repair", caption_format="compact")
    assert result.caption == compact(GUIDE["full_example_f1"])
    (note,) = result.issues
    assert note.severity == "info" and "compact" in note.fix
    assert verify_caption(result.caption, mode="repair", caption_format="compact").issues == []


def test_warn_mode_keeps_the_text_even_when_compact_is_asked_for():
    result = verify_caption(PRETTY, mode="warn", caption_format="compact")
    assert result.caption == PRETTY
    assert [i.severity for i in result.issues] == ["info"] and "warn mode" in result.issues[0].message


def test_escapes_are_kept_by_strict_and_fixed_by_repair():
    escaped = json.dumps(GUIDE["full_example_f1"], indent=2)  # ensure_ascii=True: \u2122, \u00a9
    strict = verify_caption(escaped, mode="strict")
    assert strict.caption == escaped
    (warning,) = strict.issues
    assert warning.severity == "warning" and not warning.repaired
    repaired = verify_caption(escaped, mode="repair")
    assert repaired.caption == compact(GUIDE["full_example_f1"]) and REWRITTEN in repaired.report()


@pytest.mark.parametrize("mode", ["strict", "repair"])
def test_a_byte_order_mark_is_dropped_without_re_serialising(mode):
    result = verify_caption("\ufeff" + PRETTY, mode=mode)
    assert result.caption == PRETTY
    (bom,) = result.issues
    assert bom.repaired and "byte-order mark" in bom.message


def test_a_caption_dict_is_serialised_compactly():
    assert verify_caption(GUIDE["full_example_f1"], mode="repair").caption == compact(GUIDE["full_example_f1"])


# --- plain text -------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["strict", "repair", "warn"])
def test_plain_text_is_wrapped_by_default(mode):
    result = verify_caption("  a red fox in the snow\n", mode=mode)
    assert json.loads(result.caption) == {"high_level_description": "a red fox in the snow",
                                          "compositional_deconstruction": {"background": "", "elements": []}}
    assert verify_caption(result.caption, mode="strict").caption == result.caption
    wrap = next(i for i in result.issues if "plain text" in i.message)
    assert wrap.severity == "warning" and wrap.repaired


@pytest.mark.parametrize("text", ['"SALE" painted on a wall', "café au lait, 4k", "1girl, solo, night"])
def test_plain_text_can_be_passed_through(text):
    result = verify_caption(text, mode="strict", plain_text="pass")
    assert result.caption == text
    assert [i.severity for i in result.issues] == ["warning"]


def test_empty_caption_is_refused_but_warn_passes_it():
    assert blocking_paths(refused("   ", mode="repair")) == ["$"]
    assert verify_caption("", mode="warn").caption == ""


# --- text-level repairs and parse errors ------------------------------------------------------

def test_fences_and_trailing_commas_are_repaired_with_positions():
    text = FOREIGN["llm_fenced_trailing_comma"]["input"]
    strict = refused(text, mode="strict")
    fence, comma = (i for i in strict if i.blocking)
    assert (fence.line, fence.column) == (2, 1)
    lines = text.split("\n")
    assert lines[comma.line - 1][comma.column - 1] == ","
    result = verify_caption(text, mode="repair")
    assert result.ok and "```" not in result.caption and "Enjoy" not in result.caption


def test_trailing_comma_inside_a_string_is_left_alone():
    cap = minimal(high_level_description="a list: a, b, ]")
    assert verify_caption(compact(cap), mode="strict").data == cap


@pytest.mark.parametrize("text, line, column, hint", [
    ('{\n  "a": 1\n  "b": 2\n}', 3, 3, "comma is missing"),
    ("{\n 'high_level_description': 'x'\n}", 2, 2, "double quotes"),
    ('{"compositional_deconstruction": {"background": "cut off by the tok', 1, 49, "cut off"),
    ('{"a": 1} trailing words', 1, 10, "after the JSON object"),
    ('{"a": "line\nbreak"}', 1, 12, "\\n"),
    ('{"a": NaN}', None, None, "plain JSON numbers"),
])
def test_parse_errors_give_line_column_and_a_hint(text, line, column, hint):
    issues = refused(text, mode="repair")
    assert len(issues) == 1
    assert (issues[0].line, issues[0].column) == (line, column)
    assert hint in issues[0].fix


def test_parse_error_positions_refer_to_the_original_text_inside_a_fence():
    text = "Sure!\n```json\n{\n  \"a\": 1,\n  \"b\" 2\n}\n```"
    (issue,) = refused(text, mode="repair")[-1:]
    assert (issue.line, issue.column) == (5, 7)


def test_duplicate_keys_are_errors_even_in_repair_mode():
    text = '{"high_level_description":"a","high_level_description":"b",' \
           '"compositional_deconstruction":{"background":"x","elements":[]}}'
    assert blocking_paths(refused(text, mode="repair")) == ["$.high_level_description"]


def test_lone_surrogate_escape_is_refused():
    text = compact(minimal(high_level_description="x")).replace('"x"', '"\\ud83d x"')
    assert "$.high_level_description" in blocking_paths(refused(text, mode="repair"))


@pytest.mark.parametrize("text, warned", [
    ('{"high_level_description":"caf\\u00e9","compositional_deconstruction":{"background":"","elements":[]}}', True),
    ('{"high_level_description":"caf\\u00e9 café","compositional_deconstruction":{"background":"","elements":[]}}', False),
    ('{"high_level_description":"tab\\u0009","compositional_deconstruction":{"background":"","elements":[]}}', False),
])
def test_unicode_escape_warning_follows_the_official_rule(text, warned):
    result = verify_caption(text, mode="warn")
    assert any("\\uXXXX" in i.message for i in result.issues) is warned
    assert result.caption == text


def test_byte_order_mark_is_tolerated():
    result = verify_caption("\ufeff" + compact(minimal(high_level_description="x")), mode="strict")
    assert result.data == minimal(high_level_description="x")


def test_double_encoded_caption_gets_a_specific_hint():
    issues = refused(json.dumps(compact(minimal())), mode="repair")
    assert "JSON-encoded twice" in issues[-1].fix


# --- refusals before parsing ------------------------------------------------------------------

def test_captions_over_256_kb_are_refused_in_every_mode():
    big = compact(minimal(high_level_description="x" * MAX_CAPTION_BYTES))
    for mode in ("strict", "repair", "warn"):
        assert "256 KB" in refused(big, mode=mode)[0].message
    # Multi-byte characters count as bytes, not characters.
    wide = compact(minimal(high_level_description="é" * (MAX_CAPTION_BYTES // 2)))
    assert len(wide) < MAX_CAPTION_BYTES and refused(wide, mode="warn")


def test_a_caption_just_under_the_limit_is_accepted():
    filler = MAX_CAPTION_BYTES - len(compact(minimal(high_level_description="")))
    text = compact(minimal(high_level_description="x" * filler))
    assert len(text.encode()) == MAX_CAPTION_BYTES
    assert verify_caption(text, mode="strict").caption == text


@pytest.mark.parametrize("text", ["[" * 200_000, '{"a":' * 50_000, "[" * 33 + "]" * 33])
def test_deep_nesting_is_refused_quickly_without_recursion(text):
    """Refused by one linear scan before any parse: 200 000 levels would overflow any recursive
    parser (Python's recursion limit is 1000), so reaching the message proves there is none. Speed
    itself is not timed here (no wall-clock limits in tests)."""
    issues = refused(text, mode="warn")
    assert "nested" in issues[0].message


def test_nesting_inside_strings_does_not_count():
    cap = minimal(high_level_description="[" * 100 + "{" * 100)
    assert verify_caption(compact(cap), mode="strict").data == cap


@pytest.mark.parametrize("bad", [{"a": {1, 2}}, {"a": float("nan")}, {("k",): 1}])
def test_objects_that_are_not_json_are_refused(bad):
    assert "not plain JSON" in refused(bad, mode="warn")[0].message


def test_cyclic_object_is_refused():
    cyclic = minimal()
    cyclic["compositional_deconstruction"]["elements"].append(cyclic)
    assert refused(cyclic, mode="warn")


@pytest.mark.parametrize("value", [None, 42, b"{}", ["a"]])
def test_wrong_input_types_are_refused(value):
    assert refused(value, mode="warn")


def test_huge_integer_literal_is_a_reported_error_not_a_crash():
    text = '{"compositional_deconstruction":{"background":"","elements":[{"type":"obj","bbox":[' + "9" * 5000 + ',0,1,1],"desc":"d"}]}}'
    assert refused(text, mode="repair")[0].message.startswith("invalid JSON")


# --- reporting --------------------------------------------------------------------------------

def test_format_issues_is_one_readable_line_per_issue():
    issues = refused(compact(BROKEN), mode="strict")
    text = format_issues(issues)
    assert len(text.splitlines()) == len(issues)
    assert "$.aspect_ratio" in text and "Fix:" in text and "[error]" in text
    assert format_issues([]) == "no issues"
    assert "line 3, column 4" in format_issues([Issue("$", "m.", "f.", line=3, column=4)])


def test_caption_error_message_lists_all_problems():
    with pytest.raises(CaptionError) as info:
        verify_caption(compact(BROKEN), mode="strict")
    assert str(info.value).count("\n") == len(info.value.issues)
    assert isinstance(info.value, ValueError)


def test_result_report_matches_format_issues():
    result = verify_caption(compact(BROKEN), mode="repair")
    assert result.report() == format_issues(result.issues)
