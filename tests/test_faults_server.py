"""Issue 8, faults on the shared real server: Cancel while decoding, Cancel of a queued prompt and a
Cancel that arrives while idle all leave the server ready; a model file replaced on disk between
runs is noticed (the loaders' fingerprint is size + mtime) and the next run uses the new weights.
Cancel mid-sampling is covered by tests/test_server_e2e.py."""

from __future__ import annotations

import os
import shutil
import time

import torch

from reliability_helpers import (cached_nodes, image_prompt, latent_prompt, messages, read_latent, saved,
                                 wait_idle)
from server_models import COND_FILE, UNCOND_FILE


def test_cancel_while_decoding_stops_within_a_stage(tiny_server):
    host, _ = tiny_server
    wait_idle(host)
    with host.websocket() as ws:
        prompt_id = host.post_prompt(image_prompt(seed=51, prefix="cancel_decode"))
        pressed = None
        for kind, msg in ws.messages(until_prompt_done=prompt_id, timeout=600):
            if kind == "json" and msg["type"] == "executing" and msg["data"].get("node") == "7" and pressed is None:
                time.sleep(0.5)  # inside the decoder by now
                host.interrupt()
                pressed = time.monotonic()
    stopped = time.monotonic() - pressed
    entry = host.wait_for(prompt_id, timeout=120)
    assert "execution_interrupted" in messages(entry), entry["status"]
    assert not saved(host, entry, ".png"), "a cancelled decode must not save an image"
    print(f"\ndecode stopped {stopped:.1f} s after Cancel")
    after = host.run(latent_prompt(seed=52, prefix="after_cancel_decode"), timeout=300)
    assert read_latent(host, after).shape == (1, 128, 16, 16)


def test_cancel_queued_prompt_and_cancel_while_idle(tiny_server):
    host, _ = tiny_server
    wait_idle(host)
    running = host.post_prompt(latent_prompt(seed=53, preset="Quality 48", prefix="cancel_running"))
    queued = host.post_prompt(latent_prompt(seed=54, prefix="cancel_queued"))
    host.post("/queue", {"delete": [queued]})
    host.interrupt()
    entry = host.wait_for(running, timeout=300)
    assert entry["status"]["status_str"] in ("error", "success")  # interrupted, or done before the press
    wait_idle(host)
    assert host.history(queued) is None, "a prompt deleted from the queue must never run"

    host.interrupt()  # nothing is running: must not cancel the next prompt
    entry = host.run(latent_prompt(seed=55, prefix="after_idle_cancel"), timeout=300)
    assert "execution_interrupted" not in messages(entry)


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
