"""The bundled API workflow on a real ComfyUI server with tiny models, against diffusers'
Ideogram4Pipeline with the very same weights, caption, size, preset and seed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from oracle_models import reference_features, reference_token_count
from server_models import COND_FILE, TEXT_ENCODER_FOLDER, UNCOND_FILE, VAE_FILE, oracle_pipeline

API_WORKFLOW = Path(__file__).parent.parent / "api_workflows" / "image_ideogram4_t2i_api.json"
SIZE = (256, 256)


def tiny_prompt(seed: int, preset: str = "Turbo 12", size=SIZE, prefix: str = "e2e") -> dict:
    """The shipped API workflow with only file names, dtype, size, seed and preset changed."""
    prompt = json.loads(API_WORKFLOW.read_text())
    prompt["1"]["inputs"].update(model_name=COND_FILE, unconditional_model_name=UNCOND_FILE, compute_dtype="float32")
    prompt["2"]["inputs"].update(text_encoder_name=TEXT_ENCODER_FOLDER + "/", compute_dtype="float32")
    prompt["4"]["inputs"].update(size_preset="custom (width x height below)", width=size[0], height=size[1])
    prompt["5"]["inputs"].update(seed=seed, preset=preset)
    prompt["6"]["inputs"].update(vae_name=VAE_FILE)
    prompt["8"]["inputs"].update(filename_prefix=prefix)
    return prompt


def run_image(host, prompt) -> np.ndarray:
    entry = host.run(prompt, timeout=600)
    assert entry["status"]["status_str"] == "success", host.log_tail()
    (path,) = host.output_files(entry)
    return np.asarray(Image.open(path).convert("RGB"))


def render(pipe, caption: str, seed: int, steps: int = 12, guidance: list[float] | None = None,
           mu: float = 0.5, std: float = 1.75) -> np.ndarray:
    """`pipe` (a diffusers Ideogram4Pipeline) on the very string given at SIZE, Turbo 12 unless told
    otherwise, as 8-bit levels the way SaveImage stores them (floor(255 * x))."""
    n_tokens = reference_token_count(pipe.tokenizer, caption)
    with torch.no_grad():
        expected = pipe(caption, height=SIZE[1], width=SIZE[0], num_inference_steps=steps,
                        guidance_schedule=guidance or [7.0] * 11 + [3.0], mu=mu, std=std,
                        max_sequence_length=n_tokens, generator=torch.Generator("cpu").manual_seed(seed),
                        output_type="np").images[0]
    return np.clip(255.0 * expected, 0, 255).astype(np.uint8)


def oracle_image(models, caption: str, seed: int) -> np.ndarray:
    return render(oracle_pipeline(models), caption, seed)


def assert_same_image(got: np.ndarray, expected_u8: np.ndarray, what: str) -> None:
    # A value within fp32 noise of an integer boundary may land one level lower or higher, so
    # allow 1 level anywhere but demand near-identity on average.
    diff = np.abs(got.astype(int) - expected_u8.astype(int))
    print(f"{what}: max {diff.max()} levels, mean {diff.mean():.5f}, image std {expected_u8.std():.1f}")
    assert got.shape == expected_u8.shape == (SIZE[1], SIZE[0], 3)
    assert expected_u8.std() > 5, "the oracle image is flat: the comparison would prove nothing"
    assert diff.max() <= 1 and diff.mean() < 0.01


def test_api_workflow_matches_diffusers_pipeline(tiny_server):
    host, models = tiny_server
    prompt = tiny_prompt(seed=7)
    # The caption is the workflow's Caption Builder output; a text preview shows what it sent.
    builder = prompt["3"]["inputs"]["caption"][0]
    prompt["99"] = {"class_type": "PreviewAny", "inputs": {"source": [builder, 0]}}
    entry = host.run(prompt, timeout=600)
    (path,) = host.output_files(entry)
    got = np.asarray(Image.open(path).convert("RGB"))
    caption = entry["outputs"]["99"]["text"][0]
    assert_same_image(got, oracle_image(models, caption, seed=7), "server vs diffusers")


# Typed by hand the way people write JSON: indented, one key per line, non-ASCII written literally,
# a trailing newline. It needs no repair, so it must reach the text encoder exactly like this.
PRETTY_CAPTION = json.dumps({
    "high_level_description": "A café window at dusk with a hand-painted sign that reads \"OUVERT\".",
    "style_description": {"aesthetics": "warm, quiet", "lighting": "lamplight against blue dusk",
                          "photo": "35mm, shallow depth of field", "medium": "photograph",
                          "color_palette": ["#F2B350", "#1F3A5F"]},
    "compositional_deconstruction": {"background": "a narrow street, wet cobblestones", "elements": [
        {"type": "text", "bbox": [80, 200, 220, 800], "text": "OUVERT", "desc": "cream brush lettering"},
        {"type": "obj", "bbox": [300, 150, 950, 850], "desc": "a shop window full of pastries"}]},
}, indent=2, ensure_ascii=False) + "\n"


def test_pretty_printed_caption_matches_diffusers_given_the_same_text(tiny_server):
    """Issue 11.2: a valid pretty-printed caption typed into Text Encode reaches the encoder as
    written, so the image equals diffusers' for that same string (and not for its compact form)."""
    from ideogram4_core.captions.build import serialize_caption

    host, models = tiny_server
    prompt = tiny_prompt(seed=7, prefix="pretty")
    del prompt["10"]  # no builder: the caption is typed into Text Encode
    prompt["3"]["inputs"].update(caption=PRETTY_CAPTION, caption_check="repair", caption_format="as_written")
    prompt["99"] = {"class_type": "PreviewAny", "inputs": {"source": ["3", 2]}}  # caption_report
    entry = host.run(prompt, timeout=600)
    assert entry["status"]["status_str"] == "success", host.log_tail()
    assert entry["outputs"]["99"]["text"] == ["caption OK"]
    (path,) = host.output_files(entry)
    got = np.asarray(Image.open(path).convert("RGB"))
    assert_same_image(got, oracle_image(models, PRETTY_CAPTION, seed=7), "pretty caption, server vs diffusers")
    # The comparison can tell the two forms apart: compacting first gives another image.
    compacted = oracle_image(models, serialize_caption(json.loads(PRETTY_CAPTION)), seed=7)
    off = np.abs(got.astype(int) - compacted.astype(int)).mean()
    print(f"pretty caption on the server vs diffusers given the compact form: mean {off:.2f} levels")
    assert off > 0.5


def run_latent(host, seed: int, prefix: str, ignored_guidance_list: str = "") -> torch.Tensor:
    """The sampler's latent saved by ComfyUI's SaveLatent (skips the costly full-size VAE decode)."""
    prompt = tiny_prompt(seed=seed, prefix=prefix)
    for node in ("6", "7", "8"):
        del prompt[node]
    prompt["5"]["inputs"]["guidance_list"] = ignored_guidance_list
    prompt["9"] = {"class_type": "SaveLatent", "inputs": {"samples": ["5", 0], "filename_prefix": prefix}}
    entry = host.run(prompt, timeout=600)
    assert entry["status"]["status_str"] == "success", host.log_tail()
    (path,) = host.output_files(entry)
    return load_file(str(path))["latent_tensor"]


def test_same_seed_same_latent_other_seed_other_latent(tiny_server):
    host, _ = tiny_server
    first = run_latent(host, seed=11, prefix="seed_a")
    # An input the preset ignores, changed so that ComfyUI re-runs the sampler instead of its cache.
    again = run_latent(host, seed=11, prefix="seed_b", ignored_guidance_list="7")
    other = run_latent(host, seed=12, prefix="seed_c")
    assert torch.equal(first, again)
    assert (first - other).abs().mean() > 0.1


def test_native_ksampler_matches_our_sampler_at_cfg_1(tiny_server):
    """Interop: ComfyUI's own KSampler (euler, simple, cfg 1: the conditional model alone) samples
    with our MODEL and CONDITIONING, and gives what our core sampler gives for the same noise and
    sigmas without an unconditional model. ComfyUI draws its noise in latent layout from
    torch.manual_seed(seed); its simple schedule on our flow model (shift 1, 1000 steps) at 4 steps
    is 1, 0.75, 0.5, 0.25, 0. Its Euler step goes through denoised = x - sigma * v and back, which
    moves fp32 results by a few ulps per step (bound 1e-5 of the latent scale). Our decode node
    then turns its latent into an image."""
    from ideogram4_core.latents import comfy_to_tokens
    from ideogram4_core.sampling.sampler import sample
    from ideogram4_core.sampling.schedule import SamplingPlan
    from ideogram4_core.sizes import latent_grid
    from oracle_models import ours_from

    host, models = tiny_server
    prompt = tiny_prompt(seed=3, prefix="native")
    del prompt["5"]
    prompt["9"] = {"class_type": "KSampler", "inputs": {
        "model": ["1", 0], "seed": 3, "steps": 4, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
        "positive": ["3", 0], "negative": ["3", 0], "latent_image": ["4", 0], "denoise": 1.0}}
    prompt["7"]["inputs"]["samples"] = ["9", 0]
    prompt["11"] = {"class_type": "SaveLatent", "inputs": {"samples": ["9", 0], "filename_prefix": "native"}}
    prompt["12"] = {"class_type": "PreviewAny", "inputs": {"source": [prompt["3"]["inputs"]["caption"][0], 0]}}
    entry = host.run(prompt, timeout=600)
    assert entry["status"]["status_str"] == "success", host.log_tail()
    paths = host.output_files(entry)
    image = np.asarray(Image.open(next(p for p in paths if p.suffix == ".png")).convert("RGB"))
    assert image.shape == (SIZE[1], SIZE[0], 3) and image.std() > 5
    got = comfy_to_tokens(load_file(str(next(p for p in paths if p.suffix == ".latent")))["latent_tensor"])

    caption = entry["outputs"]["12"]["text"][0]
    pipe = oracle_pipeline(models)
    grid_h, grid_w = latent_grid(*SIZE)
    feats, n = reference_features(pipe, caption, grid_h, grid_w)
    noise = torch.randn((1, 128, grid_h, grid_w), generator=torch.Generator().manual_seed(3))
    plan = SamplingPlan(torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]), (1.0,) * 4)
    with torch.no_grad():
        expected = sample(ours_from(models.cond), None, feats, [n], grid_h, grid_w, plan, comfy_to_tokens(noise))
    diff = (got - expected).abs().max().item()
    print(f"native KSampler vs our sampler: max |diff| {diff:.2e} (latent scale {expected.abs().max().item():.1f})")
    assert diff <= 1e-5 * expected.abs().max().item()


def test_live_latent_previews_reach_the_client(tiny_server):
    """With previews on (`--preview-method latent2rgb`), each sampling step sends the client an
    image decoded from the step's clean-image estimate."""
    from comfy_host import ComfyHost
    from reliability_helpers import link_tiny_models

    shared, _ = tiny_server
    host = ComfyHost(extra_args=["--preview-method", "latent2rgb"])
    link_tiny_models(shared, host)
    host.start()
    try:
        prompt = tiny_prompt(seed=8, prefix="previews")
        for node in ("6", "7", "8"):  # stop at the latent: previews come from the sampler
            del prompt[node]
        prompt["9"] = {"class_type": "SaveLatent", "inputs": {"samples": ["5", 0], "filename_prefix": "previews"}}
        previews = []
        with host.websocket() as ws:
            prompt_id = host.post_prompt(prompt)
            for kind, msg in ws.messages(until_prompt_done=prompt_id, timeout=300):
                if kind == "binary" and msg[0] == 1:  # PREVIEW_IMAGE: uint32 format, then the image
                    previews.append(msg[1][4:])
        assert host.wait_for(prompt_id)["status"]["status_str"] == "success"
        # Turbo 12: exactly one per step. ComfyUI queues every progress report and its preview for
        # the client (server.send_sync -> publish_loop) and drops none.
        assert len(previews) == 12, len(previews)
        assert all(p[:3] == b"\xff\xd8\xff" or p[:4] == b"\x89PNG" for p in previews)
    finally:
        host.stop()


def test_official_vae_in_diffusers_naming_decodes_identically(tiny_server):
    """The official release's vae/diffusion_pytorch_model.safetensors uses diffusers key names;
    placed in models/vae it loads through ComfyUI's own Load VAE and decodes like the BFL file."""
    from safetensors.torch import save_file

    host, models = tiny_server
    name = "official_vae_diffusers_naming.safetensors"
    state = {k: v.contiguous() for k, v in models.vae.state_dict().items()}
    save_file(state, str(host.models_dir / "vae" / name))
    bfl = run_image(host, tiny_prompt(seed=9, prefix="vae_bfl"))
    prompt = tiny_prompt(seed=9, prefix="vae_diffusers")
    prompt["6"]["inputs"]["vae_name"] = name
    assert np.array_equal(run_image(host, prompt), bfl)
