"""Issue 8, inputs: captions, sizes, steps, guidance values, seeds and guidance lists are checked
with clear messages on a real ComfyUI server, and huge or deeply nested captions are refused when
the prompt is queued, before anything parses them.

Who checks what: widget ranges (min/max) and conversions to INT/FLOAT are ComfyUI's own checks at
POST /prompt (HTTP 400, `value_smaller_than_min` / `value_bigger_than_max` / `invalid_input_type`);
our nodes' `validate_inputs` refuses combo values and oversized captions at the same point
(`custom_validation_failed`); rules that depend on several inputs (multiple of 16, aspect ratio,
guidance list length, polish steps) are checked when the node runs, before any model work, and end
the prompt with our message as the execution error.
"""

from __future__ import annotations

import json
import time

import pytest

import torch

from reliability_helpers import error_texts, latent_prompt, read_latent, refused, run_error

CUSTOM_SIZE = "custom (width x height below)"


def prompt_with(changes: dict, seed: int = 1) -> dict:
    prompt = latent_prompt(seed=seed, prefix="security_inputs")
    for node, inputs in changes.items():
        prompt[node]["inputs"].update(inputs)
    return prompt


RANGE_CASES = [
    # node, input, value, ComfyUI's error type
    ("5", "seed", -1, "value_smaller_than_min"),
    ("5", "seed", 2**64, "value_bigger_than_max"),
    ("5", "steps", 0, "value_smaller_than_min"),
    ("5", "steps", 201, "value_bigger_than_max"),
    ("5", "guidance", -0.5, "value_smaller_than_min"),
    ("5", "guidance", 31, "value_bigger_than_max"),
    ("5", "polish_guidance", 1e9, "value_bigger_than_max"),
    ("5", "mu", 6, "value_bigger_than_max"),
    ("5", "std", 0, "value_smaller_than_min"),
    ("5", "polish_steps", -1, "value_smaller_than_min"),
    ("4", "width", 128, "value_smaller_than_min"),
    ("4", "height", 4096, "value_bigger_than_max"),
    ("4", "batch_size", 0, "value_smaller_than_min"),
    ("4", "batch_size", 17, "value_bigger_than_max"),
]


@pytest.mark.parametrize("node,name,value,kind", RANGE_CASES, ids=[f"{c[1]}={c[2]}" for c in RANGE_CASES])
def test_widget_ranges_are_refused_when_queued(tiny_server, node, name, value, kind):
    host, _ = tiny_server
    errors = refused(host, prompt_with({node: {name: value}}))
    (error,) = errors[node]["errors"]
    assert error["type"] == kind and error["extra_info"]["input_name"] == name, error
    # the allowed range is in the message ("Value 201 bigger than max of 200")
    assert ("min of" in error["message"]) or ("max of" in error["message"]), error


TYPE_CASES = [
    ("5", "seed", "abc", "invalid_input_type"),
    ("5", "steps", {"x": 1}, "invalid_input_type"),
    ("5", "guidance", "high", "invalid_input_type"),
    ("4", "width", [1, 2, 3], "bad_linked_input"),
    ("5", "preset", "Fast 4", "custom_validation_failed"),
    ("5", "preset", 12, "custom_validation_failed"),
    ("4", "size_preset", "5:4 999x999", "custom_validation_failed"),
    ("3", "caption_check", "lenient", "custom_validation_failed"),
    ("3", "plain_text", None, "custom_validation_failed"),
    ("1", "quantization", "int4", "custom_validation_failed"),
    ("2", "compute_dtype", "float64", "custom_validation_failed"),
]


@pytest.mark.parametrize("node,name,value,kind", TYPE_CASES, ids=[f"{c[1]}={c[2]!r}" for c in TYPE_CASES])
def test_wrong_types_and_unknown_choices_are_refused_when_queued(tiny_server, node, name, value, kind):
    host, _ = tiny_server
    text = error_texts(refused(host, prompt_with({node: {name: value}})), node)
    assert kind in text and name in text, text


RUN_TIME_CASES = [
    # changes, node that refuses, message fragments (what is wrong, the rule, a fix)
    ({"4": {"size_preset": CUSTOM_SIZE, "width": 264, "height": 256}}, "4",
     ["width 264 is not a multiple of 16", "256-2048 px", "Nearest valid size: 272x256"]),
    ({"4": {"size_preset": CUSTOM_SIZE, "width": 2048, "height": 256}}, "4",
     ["aspect ratio 8.00:1 exceeds 6:1", "Nearest valid size: 2048x352"]),
    ({"5": {"preset": "Custom", "steps": 2, "guidance_list": "7, 7, 3"}}, "5",
     ["guidance_list has 3 values but steps is 2", "one value per step"]),
    ({"5": {"preset": "Custom", "steps": 2, "guidance_list": "7, strong"}}, "5",
     ["guidance_list must be numbers separated by commas", "'7, 7, 3'"]),
    ({"5": {"preset": "Custom", "steps": 2, "guidance_list": "7, 99"}}, "5",
     ["between 0 and 30", "step 2: 99", "7 for the main steps"]),
    ({"5": {"preset": "Custom", "steps": 2, "guidance_list": "nan, inf"}}, "5",
     ["between 0 and 30", "step 1: nan", "step 2: inf"]),
    ({"5": {"preset": "Custom", "steps": 2, "polish_steps": 5}}, "5",
     ["polish_steps (5) cannot exceed steps (2)", "set polish_steps to 0-2"]),
    ({"3": {"caption": '{"high_level_description": "a cat", "elements": [', "caption_check": "strict"}}, "3",
     ["caption refused", "Fix:"]),
]


@pytest.mark.parametrize("changes,node,fragments", RUN_TIME_CASES, ids=[c[2][0][:40] for c in RUN_TIME_CASES])
def test_rules_across_inputs_are_checked_when_the_node_runs(tiny_server, changes, node, fragments):
    host, _ = tiny_server
    error = run_error(host, prompt_with(changes))
    assert error["node_id"] == node, error
    for fragment in fragments:
        assert fragment in error["exception_message"], (fragment, error["exception_message"])


def test_float_seed_is_truncated_by_comfyui(tiny_server):
    """A fact of ComfyUI, documented in docs/security.md: INT widgets go through int(), so 3.7 is 3
    (truncated, not rounded to 4): the latent equals seed 3's and differs from seed 4's."""
    host, _ = tiny_server

    def latent(seed):
        prompt = prompt_with({"5": {"seed": seed, "preset": "Custom", "steps": 2, "polish_steps": 1}})
        prompt["9"]["inputs"]["filename_prefix"] = f"float_seed_{seed}"
        entry = host.run(prompt, timeout=300)
        assert entry["status"]["status_str"] == "success", entry["status"]
        return read_latent(host, entry)

    truncated, three, four = latent(3.7), latent(3), latent(4)
    assert torch.equal(truncated, three) and not torch.equal(truncated, four)


def nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth):
        value = {"high_level_description": value}
    return value


@pytest.mark.parametrize("caption,fragment", [
    ("x" * (256 * 1024 + 1), "caption is larger than 256 KB"),
    ("é" * (128 * 1024 + 1), "caption is larger than 256 KB"),  # counted in UTF-8 bytes
    ("[" * 100_000 + "]" * 100_000, "nested more than 32 levels deep"),
    ('{"a":' * 40 + "1" + "}" * 40, "nested more than 32 levels deep"),
    (nested(60), "nested more than 32 levels deep"),  # a JSON object where a string belongs
], ids=["257KB", "257KB-utf8", "100k-deep", "40-deep-object", "object-60-deep"])
def test_huge_or_deeply_nested_captions_are_refused_when_queued(tiny_server, caption, fragment):
    host, _ = tiny_server
    rss = host.rss_bytes()
    t0 = time.monotonic()
    text = error_texts(refused(host, prompt_with({"3": {"caption": caption}})), "3")
    seconds = time.monotonic() - t0
    grown = host.rss_bytes() - rss
    print(f"caption of {len(str(caption))} chars refused in {seconds:.2f} s, server RSS {grown / 2**20:+.1f} MiB")
    assert "custom_validation_failed" in text and fragment in text and "Fix:" in text, text[:2000]
    # Nothing is parsed: the server holds at most ComfyUI's few copies of a request of at most
    # 257 KB (measured 0.0-2.4 MiB); 8 MiB leaves room for Python's arena granularity. Time is printed.
    assert grown < 8 * 2**20, f"server RSS grew {grown / 2**20:.1f} MiB"


def test_a_large_request_is_refused_cheaply(tiny_server):
    """20 MB of caption: ComfyUI reads the body (its own limit is --max-upload-size, 100 MB), our
    check refuses on the length alone."""
    host, _ = tiny_server
    rss = host.rss_bytes()
    t0 = time.monotonic()
    text = error_texts(refused(host, prompt_with({"3": {"caption": "y" * 20_000_000}})), "3")
    seconds, grown = time.monotonic() - t0, host.rss_bytes() - rss
    print(f"20 MB caption refused in {seconds:.2f} s, server RSS {grown / 2**20:+.1f} MiB")
    assert "larger than 256 KB" in text
    # ComfyUI keeps the request body and its decoded prompt (two copies of the 20 MB); anything of
    # ours that parsed or split the caption would hold several times more. Time is only printed.
    assert grown < 4 * 20_000_000, f"server RSS grew {grown / 2**20:.0f} MiB"
    assert host.get("/system_stats")["system"]["comfyui_version"]  # still serving


def test_deeply_nested_request_body_does_not_take_the_server_down(tiny_server):
    """ComfyUI parses the request body itself: a body nested 200 000 deep fails in its JSON decoder
    (RecursionError -> HTTP 500, ComfyUI's behaviour, not ours); the server keeps answering."""
    host, _ = tiny_server
    body = b'{"prompt": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    status, _ = host.request("POST", "/prompt", body)
    assert status >= 400
    assert host.alive() and host.get("/system_stats")["system"]
    assert json.loads(json.dumps(host.queue()))["queue_pending"] == []
