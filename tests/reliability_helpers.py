"""Shared pieces of the reliability tests (issue 8): prompts that stop at a saved latent (cheap: the
full-size random VAE decode is the costly part of a tiny run), reading results and errors back."""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch
from safetensors.torch import load_file

from comfy_host import ComfyHost
from server_models import COND_FILE, TEXT_ENCODER_FOLDER, UNCOND_FILE, VAE_FILE
from test_server_e2e import tiny_prompt

SIZE = (256, 256)
TINY_MODEL_NAMES = {"diffusion_models": [COND_FILE, UNCOND_FILE], "text_encoders": [TEXT_ENCODER_FOLDER],
                    "vae": [VAE_FILE]}


def latent_prompt(seed: int, prefix: str, preset: str = "Turbo 12", size=SIZE) -> dict:
    """The shipped API workflow up to the sampler, saving its latent (SaveLatent) instead of decoding."""
    prompt = tiny_prompt(seed, preset=preset, size=size, prefix=prefix)
    for node in ("6", "7", "8"):
        del prompt[node]
    prompt["9"] = {"class_type": "SaveLatent", "inputs": {"samples": ["5", 0], "filename_prefix": prefix}}
    return prompt


def image_prompt(seed: int, prefix: str, preset: str = "Turbo 12", size=SIZE) -> dict:
    """The full workflow (decode + SaveImage), also saving the sampler's latent."""
    prompt = tiny_prompt(seed, preset=preset, size=size, prefix=prefix)
    prompt["9"] = {"class_type": "SaveLatent", "inputs": {"samples": ["5", 0], "filename_prefix": prefix}}
    return prompt


def saved(host, entry, suffix: str):
    return [p for p in host.output_files(entry) if p.name.endswith(suffix)]


def read_latent(host, entry) -> torch.Tensor:
    (path,) = saved(host, entry, ".latent")
    return load_file(str(path))["latent_tensor"]


def messages(entry) -> dict:
    """{message type: data} of a /history entry (the last one of each type)."""
    return {kind: data for kind, data in entry["status"].get("messages", [])}


def execution_error(entry) -> dict:
    data = messages(entry).get("execution_error")
    assert data is not None, f"expected an execution error, got {entry['status']}"
    return data


def cached_nodes(entry) -> set[str]:
    return set(messages(entry).get("execution_cached", {}).get("nodes", []))


def run_error(host, prompt, timeout: float = 300) -> dict:
    """Queue a prompt that must be accepted but fail while running; its execution_error data."""
    entry = host.wait_for(host.post_prompt(prompt), timeout=timeout)
    assert entry["status"]["status_str"] == "error", entry["status"]
    return execution_error(entry)


def refused(host, prompt) -> dict:
    """POST a prompt that must be refused at queue time; its node_errors. Nothing may be queued."""
    status, body = host.post_prompt_raw(prompt)
    assert status == 400, (status, str(body)[:2000])
    queue = host.queue()
    assert queue["queue_pending"] == [], queue
    return body.get("node_errors", {})


def error_texts(node_errors: dict, node: str) -> str:
    """Everything ComfyUI reported for one node, as one string (types, messages and details)."""
    assert node in node_errors, node_errors
    return "\n".join(f"{e['type']}: {e['message']}: {e.get('details', '')}" for e in node_errors[node]["errors"])


def link_tiny_models(source, target) -> None:
    """Make the tiny models of one host's model folders visible in another's (symlinks)."""
    for folder, names in TINY_MODEL_NAMES.items():
        for name in names:
            (target.models_dir / folder / name).symlink_to(source.models_dir / folder / name)


@contextmanager
def fault_host(shared, faults: str):
    """A server of its own with the test fault hook armed (``IDEOGRAM4_TEST_FAULT``), seeing the
    shared server's tiny models, so the faults never touch the shared one."""
    host = ComfyHost(env={"IDEOGRAM4_TEST_FAULT": faults})
    link_tiny_models(shared, host)
    host.start()
    try:
        yield host
    finally:
        host.stop()


def wait_idle(host, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        q = host.queue()
        if not q["queue_running"] and not q["queue_pending"]:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"queue not empty: {q}")
        time.sleep(0.1)
