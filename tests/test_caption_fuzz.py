"""Property tests: random and mutated captions never crash or hang the verifier.

The only exception the verifier may raise is CaptionError. Whenever repair mode accepts a caption,
its output must (a) pass strict mode unchanged, (b) be a fixed point of repair, and (c) satisfy the
spec §G.3 rules as restated independently below, so a schema mistake cannot hide behind itself.
"""

import json
import re
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ideogram4_core.captions.issues import CaptionError
from ideogram4_core.captions.verify import verify_caption

GUIDE = json.loads((Path(__file__).parent / "fixtures" / "captions" / "prompting_guide.json")
                   .read_text(encoding="utf-8"))["examples"]
# No per-example deadline (a loaded 2-core machine can stall any example); the example budgets keep
# the file short, and a real hang would still stop the run at CI's own time limit.
FAST = settings(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
VOCAB = ["high_level_description", "style_description", "compositional_deconstruction", "background",
         "elements", "type", "bbox", "desc", "text", "color_palette", "aesthetics", "lighting", "photo",
         "medium", "art_style", "aspect_ratio", "obj"]
HEX = re.compile(r"#[0-9A-F]{6}")


def follows_spec(cap: dict) -> bool:
    """Spec §G.3, written out by hand rather than through the jsonschema document."""
    def ordered(obj, order):
        return list(obj) == [k for k in order if k in obj]

    def palette_ok(p, most):
        return isinstance(p, list) and len(p) <= most and all(isinstance(c, str) and HEX.fullmatch(c) for c in p)
    if not ordered(cap, ["high_level_description", "style_description", "compositional_deconstruction"]):
        return False
    style = cap.get("style_description")
    if style is not None:
        if ("photo" in style) == ("art_style" in style) or not {"aesthetics", "lighting", "medium"} <= set(style):
            return False
        order = ["aesthetics", "lighting", "photo", "medium", "color_palette"] if "photo" in style else \
            ["aesthetics", "lighting", "medium", "art_style", "color_palette"]
        if not ordered(style, order) or ("color_palette" in style and not palette_ok(style["color_palette"], 16)):
            return False
    comp = cap["compositional_deconstruction"]
    if list(comp) != ["background", "elements"] or not isinstance(comp["background"], str):
        return False
    for el in comp["elements"]:
        order = {"obj": ["type", "bbox", "desc", "color_palette"],
                 "text": ["type", "bbox", "text", "desc", "color_palette"]}.get(el.get("type"))
        if order is None or set(el) - set(order) or not ordered(el, order) or "desc" not in el:
            return False
        if (el["type"] == "text") != ("text" in el):
            return False
        box = el.get("bbox", [0, 0, 0, 0])
        if not (len(box) == 4 and all(type(v) is int and 0 <= v <= 1000 for v in box)
                and box[0] <= box[2] and box[1] <= box[3]):
            return False
        if "color_palette" in el and not palette_ok(el["color_palette"], 5):
            return False
    return True


def check_everything(caption, modes=("strict",)) -> None:
    for mode in modes:
        try:
            result = verify_caption(caption, mode=mode)
            assert isinstance(result.caption, str)
        except CaptionError as err:
            assert err.issues and all(i.path.startswith("$") and i.fix for i in err.issues)
    try:
        repaired = verify_caption(caption, mode="repair")
    except CaptionError:
        return
    assert repaired.ok
    assert follows_spec(json.loads(repaired.caption))
    assert verify_caption(repaired.caption, mode="strict").caption == repaired.caption
    assert verify_caption(repaired.caption, mode="repair").caption == repaired.caption


@settings(FAST, max_examples=1000)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=300)
       | st.text(alphabet='{}[],:"\\ \n0123456789.-eEtrufalsn#`', max_size=300))
def test_random_text_never_crashes(text):
    check_everything(text, modes=("strict", "warn"))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2000, 2000) | st.floats(-2000, 2000, allow_nan=False)
    | st.text(max_size=20) | st.sampled_from(VOCAB + ["#ff00aa", "#FFF", "#12AB9F"]),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.sampled_from(VOCAB) | st.text(max_size=8),
                                                                       children, max_size=6),
    max_leaves=40)


@settings(FAST, max_examples=800)
@given(json_values)
def test_random_json_structures_never_crash(value):
    check_everything(value, modes=("strict", "warn"))
    check_everything(json.dumps(value))


def _mutate(draw, cap):
    """Apply one structural mutation somewhere in the caption."""
    nodes, stack = [], [cap]
    while stack:
        node = stack.pop()
        nodes.append(node)
        stack.extend(v for v in (node.values() if isinstance(node, dict) else node) if isinstance(v, (dict, list))) \
            if isinstance(node, (dict, list)) else None
    node = draw(st.sampled_from(nodes))
    action = draw(st.sampled_from(["delete", "insert", "shuffle", "replace", "lowercase"]))
    if isinstance(node, dict) and node:
        key = draw(st.sampled_from(sorted(node)))
        if action == "delete":
            del node[key]
        elif action == "insert":
            node[draw(st.sampled_from(VOCAB))] = draw(json_values)
        elif action == "shuffle":
            items = draw(st.permutations(list(node.items())))
            node.clear()
            node.update(items)
        else:
            node[key] = draw(json_values)
    elif isinstance(node, list) and node:
        i = draw(st.integers(0, len(node) - 1))
        if action == "delete":
            del node[i]
        elif action == "lowercase" and isinstance(node[i], str):
            node[i] = node[i].lower()
        elif action == "shuffle":
            node[:] = draw(st.permutations(node))
        else:
            node[i] = draw(st.integers(-1500, 2500) | st.floats(-1500, 2500, allow_nan=False) | json_values)


@st.composite
def mutated_captions(draw):
    cap = json.loads(json.dumps(GUIDE[draw(st.sampled_from(sorted(GUIDE)))]))
    for _ in range(draw(st.integers(1, 4))):
        _mutate(draw, cap)
    text = json.dumps(cap, ensure_ascii=draw(st.booleans()), indent=draw(st.sampled_from([None, 2])))
    wrapper = draw(st.sampled_from(["plain", "fence", "comma", "truncate", "noise"]))
    if wrapper == "fence":
        text = "```json\n" + text + "\n```"
    elif wrapper == "comma":
        text = text[:-1] + ",}"
    elif wrapper == "truncate":
        text = text[:draw(st.integers(0, len(text)))]
    elif wrapper == "noise":
        i = draw(st.integers(0, len(text)))
        text = text[:i] + draw(st.text(max_size=3)) + text[i:]
    return text


@settings(FAST, max_examples=1200)
@given(mutated_captions())
def test_mutated_captions_never_crash_and_repairs_are_sound(text):
    check_everything(text)


@settings(FAST, max_examples=300)
@given(st.sampled_from(sorted(GUIDE)), st.permutations(range(3)))
def test_key_order_is_always_repaired_to_canonical(name, perm):
    cap = GUIDE[name]
    keys = list(cap)
    shuffled = {keys[i]: cap[keys[i]] for i in perm if i < len(keys)}
    result = verify_caption(shuffled, mode="repair")
    assert result.caption == json.dumps(cap, ensure_ascii=False, separators=(",", ":"))
