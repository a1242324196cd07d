"""Magic prompt and describe on the real ComfyUI server, with tiny random Qwen3-VLs that have a
vision tower and an LM head, in the published text-encoder layouts:

- every layout that can generate does, and its captions pass the strict verifier and encode;
- the same inputs are served from ComfyUI's cache, and the same seed gives the same caption when
  it does run again;
- a progress bar advances per token, Cancel stops generation within a token, the server goes on;
- a missing LM head or vision tower is a clear error naming what to get;
- describe's caption feeds the caption builder's import (node input and the editor's route).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from ideogram4_core.captions.verify import verify_caption
from prompting_fixtures import (tiny_generative_qwen3vl, write_comfy_file, write_hf_folder_with_head,
                                write_lm_head_folder, write_text_only_file)
from reliability_helpers import cached_nodes, messages, refused, run_error, wait_idle
from server_models import TEXT_ENCODER_FOLDER

FROM_ENCODER = "(from the text encoder)"
WITH_HEAD = "tiny_qwen3vl_with_head"
COMFY_FP8 = "tiny_qwen3vl_comfy_fp8.safetensors"
TEXT_ONLY = "tiny_qwen3vl_text_only.safetensors"
LM_HEAD_FOLDER = "tiny_lm_head"
LM_HEAD = LM_HEAD_FOLDER + "/"  # folders are listed with a trailing slash
OFFICIAL = TEXT_ENCODER_FOLDER  # the shared server's Qwen3VLModel folder: vision tower, no LM head


@pytest.fixture(scope="module")
def host(tiny_server):
    host, _ = tiny_server
    folder = host.models_dir / "text_encoders"
    model = tiny_generative_qwen3vl(seed=31)
    write_hf_folder_with_head(model, folder / WITH_HEAD)
    write_comfy_file(model, folder / COMFY_FP8, "fp8")
    write_text_only_file(model, folder / TEXT_ONLY)
    write_lm_head_folder(model, folder / LM_HEAD_FOLDER)
    pixels = (np.random.RandomState(3).rand(96, 160, 3) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(host.input_dir / "describe_me.png")
    return host


def loader(name: str) -> dict:
    folder = "/" if "." not in name else ""
    return {"class_type": "Ideogram4TextEncoderLoader",
            "inputs": {"text_encoder_name": name + folder, "quantization": "auto", "compute_dtype": "float32"}}


def magic_graph(encoder: str, seed: int, lm_head: str = FROM_ENCODER, max_tokens: int = 128,
                prompt: str = "a lighthouse on a cliff, a sign saying \"KEEP OUT\"", **options) -> dict:
    inputs = dict(text_encoder=["1", 0], prompt=prompt, width=1536, height=1024, bboxes="keep", style_block=True,
                  temperature=0.7, seed=seed, max_tokens=max_tokens, lm_head=lm_head)
    inputs.update(options)
    return {
        "1": loader(encoder),
        "2": {"class_type": "Ideogram4MagicPrompt", "inputs": inputs},
        # The caption must also pass the encode node's own strict check and fit its token cap.
        "3": {"class_type": "Ideogram4TextEncode", "inputs": {"text_encoder": ["1", 0], "caption": ["2", 0],
                                                               "caption_check": "strict", "plain_text": "pass"}},
        "4": {"class_type": "PreviewAny", "inputs": {"source": ["3", 1]}},
        "5": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}},
    }


def caption_of(entry, node: str = "5") -> str:
    assert entry["status"]["status_str"] == "success", entry["status"]
    return entry["outputs"][node]["text"][0]


def assert_strict(caption: str) -> dict:
    assert verify_caption(caption, mode="strict").caption == caption  # compact canonical already
    return json.loads(caption)


@pytest.mark.parametrize("encoder, lm_head", [(WITH_HEAD, FROM_ENCODER), (COMFY_FP8, FROM_ENCODER),
                                              (OFFICIAL, LM_HEAD)])
def test_magic_prompt_on_each_layout(host, encoder, lm_head):
    caption = assert_strict(caption_of(host.run(magic_graph(encoder, 1, lm_head), timeout=600)))
    assert "style_description" in caption
    assert all("bbox" in e for e in caption["compositional_deconstruction"]["elements"])


def test_options_reach_the_caption(host):
    graph = magic_graph(WITH_HEAD, 5, bboxes="strip", style_block=False)
    caption = assert_strict(caption_of(host.run(graph, timeout=600)))
    assert "style_description" not in caption
    assert not any("bbox" in e for e in caption["compositional_deconstruction"]["elements"])


def test_cached_and_reproducible(host):
    first = host.run(magic_graph(WITH_HEAD, 11), timeout=600)
    again = host.run(magic_graph(WITH_HEAD, 11), timeout=600)
    assert "2" in cached_nodes(again), "the same inputs must not generate again"
    other = host.run(magic_graph(WITH_HEAD, 12), timeout=600)
    rerun = host.run(magic_graph(WITH_HEAD, 11), timeout=600)  # evicted by seed 12: generates again
    assert "2" not in cached_nodes(rerun)
    assert caption_of(rerun) == caption_of(again) == caption_of(first) != caption_of(other)


def test_progress_per_token_and_cancel_within_a_token(host):
    wait_idle(host)
    graph = magic_graph(WITH_HEAD, 21, max_tokens=2000)
    tokens_after_cancel, maximum = None, None
    with host.websocket() as ws:
        prompt_id = host.post_prompt(graph)
        for kind, msg in ws.messages(until_prompt_done=prompt_id, timeout=600):
            if kind != "json" or msg.get("type") != "progress" or msg["data"].get("node") != "2":
                continue
            maximum = msg["data"]["max"]
            if tokens_after_cancel is None and msg["data"]["value"] >= 5:  # generation is under way
                host.interrupt()
                tokens_after_cancel = 0
            elif tokens_after_cancel is not None:
                tokens_after_cancel += 1
    entry = host.wait_for(prompt_id, timeout=60)
    assert "execution_interrupted" in messages(entry), entry["status"]
    assert maximum == 2000
    assert tokens_after_cancel is not None and tokens_after_cancel <= 1, tokens_after_cancel
    assert_strict(caption_of(host.run(magic_graph(WITH_HEAD, 22), timeout=600)))  # still serving


def test_missing_lm_head_is_a_clear_error(host):
    error = run_error(host, magic_graph(OFFICIAL, 0))
    assert error["node_id"] == "2"
    for fragment in ("has no LM head", "diffusers/qwen3-vl-8b-instruct-lm-head", "models/text_encoders",
                     "qwen3vl_8b_fp8_scaled.safetensors"):
        assert fragment in error["exception_message"], error["exception_message"]


def test_lm_head_name_is_checked_when_queued(host):
    errors = refused(host, magic_graph(WITH_HEAD, 0, lm_head="../../secrets.safetensors"))
    assert "2" in errors


def describe_graph(encoder: str, lm_head: str = FROM_ENCODER, seed: int = 0) -> dict:
    return {
        "1": loader(encoder),
        "2": {"class_type": "LoadImage", "inputs": {"image": "describe_me.png"}},
        "3": {"class_type": "Ideogram4Describe",
              "inputs": {"text_encoder": ["1", 0], "image": ["2", 0], "style_block": True, "temperature": 0.3,
                         "seed": seed, "max_tokens": 200, "lm_head": lm_head}},
        # Describe's caption as the builder's import: a blank layout means "use the imported caption".
        "4": {"class_type": "Ideogram4CaptionBuilder",
              "inputs": {"high_level_description": "", "style": "photo", "photo_or_art_style": "", "aesthetics": "",
                         "lighting": "", "medium": "", "background": "", "width": ["3", 1], "height": ["3", 2],
                         "layout": "", "import_caption": ["3", 0]}},
        "5": {"class_type": "PreviewAny", "inputs": {"source": ["3", 0]}},
        "6": {"class_type": "PreviewAny", "inputs": {"source": ["4", 0]}},
        "7": {"class_type": "PreviewAny", "inputs": {"source": ["3", 1]}},
    }


@pytest.mark.parametrize("encoder, lm_head", [(WITH_HEAD, FROM_ENCODER), (OFFICIAL, LM_HEAD)])
def test_describe_feeds_the_caption_builder(host, encoder, lm_head):
    entry = host.run(describe_graph(encoder, lm_head), timeout=600)
    described = caption_of(entry)
    caption = assert_strict(described)
    for element in caption["compositional_deconstruction"]["elements"]:
        assert "bbox" in element and "color_palette" in element
    assert "color_palette" in caption["style_description"]
    assert caption_of(entry, "6") == described  # the builder passes the imported caption through
    assert caption_of(entry, "7") == "160"  # the image's width goes on to the builder's canvas
    editor = host.post("/ideogram4/parse_caption", {"caption": described})  # the Import button
    assert editor["ok"] and editor["data"] == caption, editor


def test_missing_vision_tower_is_a_clear_error(host):
    error = run_error(host, describe_graph(TEXT_ONLY, LM_HEAD))
    assert error["node_id"] == "3"
    for fragment in ("has no vision tower", "qwen3vl_8b_fp8_scaled.safetensors", "text_encoder/"):
        assert fragment in error["exception_message"], error["exception_message"]


def test_magic_prompt_template_wiring(host):
    """The bundled template's API twin up to Text Encode, with the tiny text encoder: the magic
    prompt's caption goes through the builder (blank layout) into Text Encode unchanged."""
    from pathlib import Path

    twin = json.loads((Path(__file__).parent.parent / "api_workflows" / "image_ideogram4_magic_prompt_api.json")
                      .read_text())
    prompt = {k: twin[k] for k in ("2", "11", "10", "3")}
    prompt["2"]["inputs"].update(text_encoder_name=WITH_HEAD + "/", compute_dtype="float32")
    prompt["11"]["inputs"].update(max_tokens=128)
    prompt["20"] = {"class_type": "PreviewAny", "inputs": {"source": ["11", 0]}}
    prompt["21"] = {"class_type": "PreviewAny", "inputs": {"source": ["10", 0]}}
    prompt["22"] = {"class_type": "PreviewAny", "inputs": {"source": ["3", 1]}}
    entry = host.run(prompt, timeout=600)
    generated = caption_of(entry, "20")
    assert_strict(generated)
    assert caption_of(entry, "21") == generated
    assert int(caption_of(entry, "22")) > 0
