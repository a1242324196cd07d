"""The LoRA node on a real ComfyUI server with the tiny models (conftest `tiny_server`), against
diffusers' Ideogram4Pipeline with the same weights plus `load_lora_weights` (LoRA on `transformer`
only, as our node's default strengths 1 / 0): the bundled API workflow with Ideogram4LoraLoader
nodes between the loader and the sampler. fp32 compute; the image tolerance is test_server_e2e's
(SaveImage floors 255 x, so a value within fp32 noise of a level boundary may move one level)."""

from __future__ import annotations

import numpy as np
import torch
from safetensors.torch import save_file

import lora_fixtures as lf
from server_models import TINY_DIT, oracle_pipeline
from test_server_e2e import SIZE, render, run_image, run_latent, tiny_prompt

CAPTION_NODE = "3"


def with_loras(prompt: dict, loras: list[tuple[str, float]]) -> dict:
    """Chain one Ideogram4LoraLoader per (file, strength) between node 1 (loader) and 5 (sampler)."""
    source = "1"
    for i, (name, strength) in enumerate(loras):
        node = str(20 + i)
        prompt[node] = {"class_type": "Ideogram4LoraLoader", "inputs": {
            "model": [source, 0], "unconditional_model": [source, 1], "lora_name": name,
            "strength_cond": strength, "strength_uncond": 0.0}}
        source = node
    prompt["5"]["inputs"].update(model=[source, 0], unconditional_model=[source, 1])
    return prompt


def write_lora(host, name: str, update: dict, fmt: str) -> str:
    state, metadata = lf.write_format(update, fmt)
    save_file(state, str(host.models_dir / "loras" / name), metadata=metadata)
    return name


def expected_image(models, caption: str, loras: list[tuple[dict, float]], seed: int) -> np.ndarray:
    pipe = oracle_pipeline(models)
    try:
        for i, (update, _) in enumerate(loras):
            pipe.load_lora_weights(lf.oracle_state(update), adapter_name=f"a{i}")
        if loras:
            pipe.set_adapters([f"a{i}" for i in range(len(loras))], adapter_weights=[s for _, s in loras])
        return render(pipe, caption, seed)
    finally:
        if loras:
            pipe.unload_lora_weights()  # the session's models are shared with other tests


def caption_of(host, prompt) -> dict:
    prompt = dict(prompt)
    builder = prompt[CAPTION_NODE]["inputs"]["caption"][0]
    prompt["99"] = {"class_type": "PreviewAny", "inputs": {"source": [builder, 0]}}
    return prompt


def compare(got: np.ndarray, expected: np.ndarray, label: str, plain: np.ndarray | None = None):
    diff = np.abs(got.astype(int) - expected.astype(int))
    effect = "" if plain is None else f", LoRA effect {np.abs(plain.astype(int) - expected.astype(int)).mean():.1f}/255 mean"
    print(f"{label}: max {diff.max()} levels, mean {diff.mean():.4f}{effect}")
    assert got.shape == expected.shape == (SIZE[1], SIZE[0], 3)
    assert diff.max() <= 1 and diff.mean() < 0.01


def test_lora_images_equal_diffusers_load_lora_weights(tiny_server):
    host, models = tiny_server
    first, second = lf.fused_update(TINY_DIT, seed=51, size=0.3), lf.split_update(TINY_DIT, seed=52, size=0.3)
    write_lora(host, "e2e_ai_toolkit.safetensors", first, "ai_toolkit")
    write_lora(host, "e2e_onetrainer.safetensors", second, "onetrainer")
    seed = 9
    base = tiny_prompt(seed=seed, prefix="lora_plain")
    probe = caption_of(host, base)
    entry = host.run(probe, timeout=600)
    assert entry["status"]["status_str"] == "success", host.log_tail()
    caption = entry["outputs"]["99"]["text"][0]
    plain = expected_image(models, caption, [], seed)

    single = run_image(host, with_loras(tiny_prompt(seed=seed, prefix="lora_one"),
                                        [("e2e_ai_toolkit.safetensors", 1.0)]))
    compare(single, expected_image(models, caption, [(first, 1.0)], seed), "ai-toolkit x1", plain)

    chained = run_image(host, with_loras(tiny_prompt(seed=seed, prefix="lora_two"),
                                         [("e2e_ai_toolkit.safetensors", 1.0), ("e2e_onetrainer.safetensors", 0.5)]))
    compare(chained, expected_image(models, caption, [(first, 1.0), (second, 0.5)], seed),
            "ai-toolkit x1 + OneTrainer x0.5", plain)


def test_graph_without_the_lora_gives_the_bit_identical_latent_again(tiny_server):
    host, _ = tiny_server
    update = lf.fused_update(TINY_DIT, seed=53, size=0.3)
    write_lora(host, "e2e_kohya.safetensors", update, "kohya_unet")
    before = run_latent(host, seed=13, prefix="rm_before")
    prompt = tiny_prompt(seed=13, prefix="rm_lora")
    for node in ("6", "7", "8"):
        del prompt[node]
    prompt["9"] = {"class_type": "SaveLatent", "inputs": {"samples": ["5", 0], "filename_prefix": "rm_lora"}}
    entry = host.run(with_loras(prompt, [("e2e_kohya.safetensors", 1.0)]), timeout=600)
    assert entry["status"]["status_str"] == "success", host.log_tail()
    # An input the preset ignores, changed so that ComfyUI re-runs the sampler with the plain MODEL.
    after = run_latent(host, seed=13, prefix="rm_after", ignored_guidance_list="7")
    assert torch.equal(before, after)


def test_a_bad_lora_is_a_clear_error_and_the_server_keeps_running(tiny_server):
    host, _ = tiny_server
    save_file({"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, 8),
               "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.zeros(8, 4)},
              str(host.models_dir / "loras" / "sd15_te.safetensors"))
    entry = host.wait_for(host.post_prompt(with_loras(tiny_prompt(seed=1, prefix="bad_lora"),
                                                      [("sd15_te.safetensors", 1.0)])), 600)
    assert entry["status"]["status_str"] == "error"
    messages = " ".join(str(m) for m in entry["status"]["messages"])
    assert "is not an Ideogram 4 LoRA" in messages and "layers.{0-1}.attention.qkv" in messages
    assert run_latent(host, seed=1, prefix="after_bad").isfinite().all()  # still serving


def test_lora_turbo_template_twin_runs_without_the_unconditional_model(tiny_server):
    """The image_ideogram4_lora_turbo API twin with the tiny files: conditional model only, a LoRA,
    8 steps; cond-only sampling equals diffusers' pipeline at guidance 1 (where its unconditional
    pass has weight 1 - 1 = 0)."""
    import json
    from pathlib import Path

    from server_models import COND_FILE, TEXT_ENCODER_FOLDER, VAE_FILE

    host, models = tiny_server
    update = lf.fused_update(TINY_DIT, seed=54, size=0.3)
    write_lora(host, "e2e_turbo.safetensors", update, "ai_toolkit")
    twin = Path(__file__).parent.parent / "api_workflows" / "image_ideogram4_lora_turbo_api.json"
    prompt = json.loads(twin.read_text())
    assert "unconditional_model" not in prompt["5"]["inputs"] and prompt["11"]["class_type"] == "Ideogram4LoraLoader"
    prompt["1"]["inputs"].update(model_name=COND_FILE, compute_dtype="float32")
    prompt["2"]["inputs"].update(text_encoder_name=TEXT_ENCODER_FOLDER + "/", compute_dtype="float32")
    prompt["4"]["inputs"].update(size_preset="custom (width x height below)", width=SIZE[0], height=SIZE[1])
    prompt["6"]["inputs"].update(vae_name=VAE_FILE)
    prompt["11"]["inputs"].update(lora_name="e2e_turbo.safetensors")
    prompt["8"]["inputs"].update(filename_prefix="lora_turbo")
    probe = caption_of(host, prompt)
    entry = host.run(probe, timeout=600)
    (path,) = host.output_files(entry)
    from PIL import Image

    got = np.asarray(Image.open(path).convert("RGB"))
    caption = entry["outputs"]["99"]["text"][0]
    sampler = prompt["5"]["inputs"]
    pipe = oracle_pipeline(models)
    try:
        pipe.load_lora_weights(lf.oracle_state(update), adapter_name="turbo")
        expected = render(pipe, caption, sampler["seed"], steps=sampler["steps"], guidance=[1.0] * sampler["steps"],
                          mu=sampler["mu"], std=sampler["std"])
    finally:
        pipe.unload_lora_weights()
    compare(got, expected, "turbo template (cond only, 8 steps)")
