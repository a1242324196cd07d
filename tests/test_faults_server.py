"""Issue 8, faults on a real server: Cancel mid-sampling, Cancel while decoding, Cancel of a
queued prompt and a Cancel that arrives while idle all leave the server ready; a model file
replaced on disk between runs is noticed (the loaders' fingerprint is size + mtime) and the next
run uses the new weights.

The Cancel tests run on a server of their own, started with the pack's test-only fault hook
(nodes/faults.py) `IDEOGRAM4_TEST_FAULT=await_cancel_in_step:2,await_cancel_in_decode`: step 2 of
every sampling run, and every decode as its full-resolution level starts, wait until Cancel was
pressed. So the press lands while that stage is in flight however slowly the machine runs, and
what ran after it can be counted exactly. The press follows step 1's progress report, the one
report every host sends (ComfyUI 0.33 drops later ones that come within 100 ms). Prompts that must
run to the end use 1 step and stop at the latent, so they never reach either point.
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from reliability_helpers import (cached_nodes, fault_host, image_prompt, latent_prompt, messages, read_latent,
                                 saved, wait_idle)
from server_models import COND_FILE, UNCOND_FILE

CANCEL_FAULTS = "await_cancel_in_step:2,await_cancel_in_decode"


@pytest.fixture(scope="module")
def cancel_server(tiny_server):
    with fault_host(tiny_server[0], CANCEL_FAULTS) as host:
        yield host


def one_step(prompt: dict) -> dict:
    """The Custom preset with 1 step: never reaches the step-2 wait."""
    prompt["5"]["inputs"].update(preset="Custom", steps=1, polish_steps=1)
    return prompt


def check_ready(host, shared, seed: int, prefix: str) -> None:
    """The next prompt runs to the end with exactly the latent the shared server gives."""
    entry = host.run(one_step(latent_prompt(seed=seed, prefix=prefix)), timeout=600)
    assert "execution_interrupted" not in messages(entry), entry["status"]
    reference = shared.run(one_step(latent_prompt(seed=seed, prefix=prefix + "_ref")), timeout=600)
    assert torch.equal(read_latent(host, entry), read_latent(shared, reference))


def test_cancel_mid_sampling_stops_within_one_step_then_next_prompt_succeeds(cancel_server, tiny_server):
    host, shared = cancel_server, tiny_server[0]
    wait_idle(host)
    reported = []  # the sampler's progress reports (the step numbers it finished and reported)
    log_start = len(host.log)
    with host.websocket() as ws:
        prompt_id = host.post_prompt(latent_prompt(seed=5, prefix="cancelled"))
        for kind, msg in ws.messages(until_prompt_done=prompt_id, timeout=600):
            if kind == "json" and msg.get("type") == "progress" and msg["data"].get("node") == "5":
                reported.append(msg["data"]["value"])
                if msg["data"]["value"] == 1:
                    host.interrupt()  # what the Cancel button sends; step 2 is in flight (it waits for it)
    entry = host.wait_for(prompt_id, timeout=600)
    assert entry["status"]["status_str"] == "error" and "execution_interrupted" in messages(entry), entry["status"]
    # Step 2 was in flight at the press. It stopped inside its model calls (ComfyUI's offloadable
    # layers check Cancel at each call) or at its end, where it waits; nothing reported after it.
    assert reported == [1], reported
    # The fault hook logs each step that finished its model calls: step 3 never ran.
    reached = [line for line in host.log[log_start:].splitlines() if "reached step" in line]
    assert [line.split()[-1] for line in reached] in (["1"], ["1", "2"]), reached
    assert not host.output_files(entry), "a cancelled run must not save anything"
    check_ready(host, shared, seed=6, prefix="after_cancel")


def test_cancel_while_decoding_stops_within_a_stage(cancel_server, tiny_server):
    host, shared = cancel_server, tiny_server[0]
    wait_idle(host)
    with host.websocket() as ws:
        prompt_id = host.post_prompt(one_step(image_prompt(seed=51, prefix="cancel_decode")))
        pressed = False
        for kind, msg in ws.messages(until_prompt_done=prompt_id, timeout=600):
            if kind == "json" and msg["type"] == "executing" and msg["data"].get("node") == "7" and not pressed:
                host.interrupt()  # the decoder waits for it before its full-resolution level
                pressed = True
    entry = host.wait_for(prompt_id, timeout=600)
    assert pressed and "execution_interrupted" in messages(entry), entry["status"]
    assert messages(entry)["execution_interrupted"]["node_id"] == "7", messages(entry)["execution_interrupted"]
    assert not saved(host, entry, ".png"), "a cancelled decode must not save an image"
    check_ready(host, shared, seed=52, prefix="after_cancel_decode")


def test_cancel_queued_prompt_and_cancel_while_idle(cancel_server, tiny_server):
    host, shared = cancel_server, tiny_server[0]
    wait_idle(host)
    with host.websocket() as ws:
        running = host.post_prompt(latent_prompt(seed=53, prefix="cancel_running"))  # waits at step 2
        queued = host.post_prompt(latent_prompt(seed=54, prefix="cancel_queued"))
        for kind, msg in ws.messages(until_prompt_done=running, timeout=600):
            if kind == "json" and msg.get("type") == "progress" and msg["data"].get("node") == "5":
                break  # the first is running (a press before it starts would be reset by ComfyUI)
        host.post("/queue", {"delete": [queued]})
        host.interrupt()
    entry = host.wait_for(running, timeout=600)
    assert entry["status"]["status_str"] == "error" and "execution_interrupted" in messages(entry), entry["status"]
    wait_idle(host)
    assert host.history(queued) is None, "a prompt deleted from the queue must never run"

    host.interrupt()  # nothing is running: must not cancel the next prompt
    check_ready(host, shared, seed=55, prefix="after_idle_cancel")


def test_model_file_replaced_on_disk_is_reloaded(tiny_server):
    host, _ = tiny_server
    folder = host.models_dir / "diffusion_models"
    swap = folder / "swap_cond.safetensors"
    shutil.copyfile(folder / COND_FILE, swap)

    def run(prefix):
        prompt = latent_prompt(seed=61, prefix=prefix)
        prompt["1"]["inputs"]["model_name"] = swap.name
        entry = host.run(prompt, timeout=300)
        return entry, read_latent(host, entry)

    def replace_with(source):
        tmp = folder / "swap_cond.tmp"
        shutil.copyfile(source, tmp)
        os.replace(tmp, swap)  # as a download or copy finishing would

    try:
        _, original = run("swap_1")
        replace_with(folder / UNCOND_FILE)  # same architecture and size, other weights
        entry, replaced = run("swap_2")
        assert "1" not in cached_nodes(entry), "the loader served its cache after the file changed"
        assert not torch.equal(original, replaced), "the new weights were not used"

        entry, _ = run("swap_3")  # nothing changed on disk: the loader stays cached
        assert "1" in cached_nodes(entry)

        replace_with(folder / COND_FILE)
        entry, restored = run("swap_4")
        assert "1" not in cached_nodes(entry) and torch.equal(original, restored)
    finally:
        swap.unlink(missing_ok=True)
