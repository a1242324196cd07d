"""The caption builder (what a builder node calls) and the torch layout preview."""

import json

import pytest
import torch

from ideogram4_core.captions.build import build_caption, build_element, serialize_caption
from ideogram4_core.captions.preview import render_layout_preview
from ideogram4_core.captions.verify import verify_caption


def test_builder_writes_canonical_order_and_omits_empty_optionals():
    cap = build_caption(high_level_description="A poster.", background="white", style="photo",
                        aesthetics="clean", lighting="soft", medium="photograph", photo="50mm",
                        color_palette=["#ff0000", "", " #00ff00 "],
                        elements=[{"desc": "a cup", "type": "obj", "bbox": [10.4, 20.6, 30, 40]},
                                  {"type": "text", "text": "HI", "desc": "big letters", "color_palette": []}])
    assert list(cap) == ["high_level_description", "style_description", "compositional_deconstruction"]
    assert list(cap["style_description"]) == ["aesthetics", "lighting", "photo", "medium", "color_palette"]
    assert cap["style_description"]["color_palette"] == ["#FF0000", "#00FF00"]
    first, second = cap["compositional_deconstruction"]["elements"]
    assert first == {"type": "obj", "bbox": [10, 21, 30, 40], "desc": "a cup"}
    assert list(second) == ["type", "text", "desc"]  # no bbox, empty palette dropped
    result = verify_caption(cap, mode="strict")
    assert result.caption == serialize_caption(cap)


def test_builder_art_style_order_and_no_summary():
    cap = build_caption(background="b", style="art_style", aesthetics="a", lighting="l", medium="illustration",
                        art_style="flat")
    assert "high_level_description" not in cap
    assert list(cap["style_description"]) == ["aesthetics", "lighting", "medium", "art_style"]


def test_builder_keeps_a_palette_without_style_so_the_verifier_can_explain():
    cap = build_caption(background="b", color_palette=["#112233"])
    assert cap["style_description"] == {"color_palette": ["#112233"]}
    result = verify_caption(cap, mode="warn")
    assert "$.style_description" in {i.path for i in result.issues if i.blocking}


def test_builder_rejects_unknown_style_kind():
    with pytest.raises(ValueError):
        build_caption(style="painting")


def test_build_element_passes_junk_bbox_values_on_for_the_verifier():
    elem = build_element(type="obj", desc="d", bbox=[1, "x", float("nan"), 3])
    assert elem["bbox"][0] == 1 and elem["bbox"][1] == "x"


def test_serialisation_is_compact_utf8_in_given_order():
    assert serialize_caption({"b": "é", "a": [1, 2]}) == '{"b":"é","a":[1,2]}'


# --- preview ----------------------------------------------------------------------------------

def _caption(*elements, palette=None):
    return build_caption(background="b", elements=elements, style="art_style" if palette else "none",
                         aesthetics="a", lighting="l", medium="m", art_style="s", color_palette=palette)


def test_preview_shape_dtype_range_and_aspect():
    img = render_layout_preview(_caption(), width=1920, height=1080)
    assert img.shape == (288, 512, 3) and img.dtype == torch.float32
    assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0
    assert render_layout_preview(_caption(), 768, 1344, long_edge=256).shape == (256, 146, 3)


def test_bbox_axis_order_is_y_then_x():
    # A box in the top strip ([y 0..250, x 0..1000]) must colour the top rows only.
    img = render_layout_preview(_caption({"type": "obj", "bbox": [0, 0, 250, 1000], "desc": "d",
                                          "color_palette": ["#FF0000"]}), 1000, 1000, long_edge=100)
    top, bottom = img[5:20, 40:60], img[40:100]
    assert top[..., 0].mean() > top[..., 2].mean() + 0.05  # tinted red
    assert torch.allclose(bottom, torch.full_like(bottom, bottom[0, 0, 0]))  # untouched canvas


def test_outline_uses_the_first_palette_colour_at_the_right_pixels():
    img = render_layout_preview(_caption({"type": "obj", "bbox": [200, 400, 600, 800], "desc": "d",
                                          "color_palette": ["#00FF00"]}), 1000, 500, long_edge=1000)
    # 1000x500 target -> 500 rows x 1000 columns; bbox rows 100..300, columns 400..800.
    assert torch.equal(img[200, 400], torch.tensor([0.0, 1.0, 0.0]))  # left edge
    assert torch.equal(img[299, 600], torch.tensor([0.0, 1.0, 0.0]))  # bottom edge
    assert not torch.equal(img[200, 399], torch.tensor([0.0, 1.0, 0.0]))  # just outside


def test_text_elements_are_hatched_and_objects_are_not():
    obj = render_layout_preview(_caption({"type": "obj", "bbox": [0, 0, 1000, 1000], "desc": "d"}), 256, 256)
    txt = render_layout_preview(_caption({"type": "text", "bbox": [0, 0, 1000, 1000], "text": "A", "desc": "d"}),
                                256, 256)
    def spread(img):  # largest per-channel standard deviation inside the box
        return float(img[60:200, 60:200].reshape(-1, 3).std(0).max())
    assert spread(obj) < 1e-6 < spread(txt)


def test_style_palette_is_a_strip_along_the_bottom():
    img = render_layout_preview(_caption(palette=["#0000FF", "#FFFF00"]), 400, 400, long_edge=400)
    assert torch.equal(img[-1, 10], torch.tensor([0.0, 0.0, 1.0]))
    assert torch.equal(img[-1, 390], torch.tensor([1.0, 1.0, 0.0]))


@pytest.mark.parametrize("bad", [None, [1, 2, 3], ["a", 0, 1, 1], [float("inf"), 0, 1, 1], "0,0,1,1"])
def test_unusable_bboxes_are_skipped(bad):
    cap = {"compositional_deconstruction": {"background": "", "elements": [{"type": "obj", "bbox": bad}, 7]}}
    img = render_layout_preview(cap, 64, 64)
    assert torch.allclose(img, torch.full_like(img, img[0, 0, 0]))


def test_preview_accepts_caption_text_and_tolerates_swapped_or_out_of_range_boxes():
    cap = _caption({"type": "obj", "bbox": [900, 900, -50, 100], "desc": "d", "color_palette": ["#FF0000"]})
    img = render_layout_preview(json.dumps(cap), 100, 100, long_edge=100)
    assert img[50, 50, 0] > img[50, 50, 2]
    assert render_layout_preview("not json at all", 10, 10, long_edge=10).shape == (10, 10, 3)


def test_preview_rejects_non_positive_sizes():
    with pytest.raises(ValueError):
        render_layout_preview(_caption(), 0, 100)
