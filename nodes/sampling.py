"""The dual-model flow-matching sampler node: official presets or custom settings, step-indexed
guidance, ComfyUI progress, previews and cancel."""

from __future__ import annotations

import torch
from comfy_api.latest import io

import comfy.model_management
import comfy.utils
import latent_preview

from ..ideogram4_core.constants import PIXELS_PER_TOKEN
from ..ideogram4_core.editing.masks import token_mask
from ..ideogram4_core.latents import comfy_to_tokens, tokens_to_comfy
from ..ideogram4_core.memory import dit_inference_bytes
from ..ideogram4_core.sampling.sampler import initial_noise, sample
from ..ideogram4_core.sampling.schedule import custom_plan, preset_plan
from ..ideogram4_core.sizes import check_size
from . import faults
from .comfy_model import unwrap_dit
from .files import check_choice
from .oom import oom_guard

CUSTOM = "Custom"
PRESET_NAMES = {"Quality 48": "V4_QUALITY_48", "Default 20": "V4_DEFAULT_20", "Turbo 12": "V4_TURBO_12"}


def parse_guidance_list(text: str, steps: int) -> list[float] | None:
    """'7, 7, 3' -> [7.0, 7.0, 3.0] (sampling order); empty -> None. Length must equal steps."""
    if not text.strip():
        return None
    try:
        values = [float(v) for v in text.replace(";", ",").replace("\n", ",").split(",") if v.strip()]
    except ValueError as err:
        raise ValueError(f"guidance_list must be numbers separated by commas, e.g. '7, 7, 3': {err}") from None
    if len(values) != steps:
        raise ValueError(f"guidance_list has {len(values)} values but steps is {steps}: give one value per step, "
                         "first value = first (noisiest) step")
    bad = [(i, v) for i, v in enumerate(values, 1) if not (0.0 <= v <= 30.0)]  # also refuses nan / inf
    if bad:
        shown = ", ".join(f"step {i}: {v:g}" for i, v in bad[:5])
        raise ValueError(f"guidance_list values must be between 0 and 30 ({shown}); the official schedule "
                         "uses 7 for the main steps and 3 for the last ones")
    return values


def conditioning_features(positive) -> tuple[torch.Tensor, list[int]]:
    if not positive or not isinstance(positive[0], (list, tuple)) or not torch.is_tensor(positive[0][0]):
        raise ValueError("positive must come from 'Ideogram 4 Text Encode'")
    features, extras = positive[0][0], positive[0][1]
    counts = extras.get("ideogram4_token_counts") or [features.shape[1]] * features.shape[0]
    return features, list(counts)


def input_image(samples: torch.Tensor, mask, denoise: float):
    """(input tokens or None, token mask or None) for image-to-image / inpainting."""
    if mask is None and denoise >= 1.0:
        return None, None  # text-to-image: the latent only sets size and batch
    batch, _, grid_h, grid_w = samples.shape
    if not bool(samples.any()):
        using = f"denoise {denoise:g}" if mask is None else "a mask"
        raise ValueError(f"{using} starts from the input latent, but it is empty (all zeros, e.g. from Ideogram 4 "
                         "Empty Latent): connect Ideogram 4 VAE Encode's latent of the image to edit, or "
                         "disconnect the mask and set denoise to 1 for text-to-image")
    tokens_mask = None
    if mask is not None:
        tokens_mask = token_mask(mask, grid_h, grid_w)
        if tokens_mask.shape[0] not in (1, batch):
            raise ValueError(f"{tokens_mask.shape[0]} masks for a latent batch of {batch}: give one mask, or one "
                             "per image")
    return comfy_to_tokens(samples.float().cpu()), tokens_mask


class Ideogram4Sampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="Ideogram4Sampler",
            display_name="Ideogram 4 Sampler",
            category="Ideogram 4",
            description="Euler flow matching with the conditional and unconditional transformers "
            "(v = w * v_cond + (1 - w) * v_uncond), the official logit-normal schedule and per-step guidance.",
            inputs=[
                io.Model.Input("model", tooltip="The conditional transformer."),
                io.Model.Input("unconditional_model", optional=True, tooltip="The unconditional transformer. "
                               "Without it every step uses the conditional velocity alone (distilled models)."),
                io.Conditioning.Input("positive", tooltip="From 'Ideogram 4 Text Encode'."),
                io.Latent.Input("latent", tooltip="Sets the size and batch (e.g. 'Ideogram 4 Empty Latent'). For "
                                "image-to-image and inpainting, the image to start from (Ideogram 4 VAE Encode)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Noise is drawn on the CPU, so a seed gives the same image on any device."),
                io.Combo.Input("preset", options=[*PRESET_NAMES, CUSTOM], default="Default 20",
                               tooltip="Official presets: Quality 48 (48 steps, std 1.5), Default 20 (std 1.75), "
                               "Turbo 12 (mu 0.5). Guidance 7, the last steps at 3. Custom uses the values below."),
                io.Int.Input("steps", default=20, min=1, max=200, tooltip="Custom only: number of steps."),
                io.Float.Input("mu", default=0.0, min=-5.0, max=5.0, step=0.05,
                               tooltip="Custom only: schedule mean before the resolution shift (higher = noisier steps)."),
                io.Float.Input("std", default=1.75, min=0.1, max=5.0, step=0.05,
                               tooltip="Custom only: spread of the logit-normal schedule."),
                io.Float.Input("guidance", default=7.0, min=0.0, max=30.0, step=0.1,
                               tooltip="Custom only: guidance weight w of the main steps (1 = conditional only)."),
                io.Float.Input("polish_guidance", default=3.0, min=0.0, max=30.0, step=0.1,
                               tooltip="Custom only: guidance of the last polish_steps steps."),
                io.Int.Input("polish_steps", default=2, min=0, max=200,
                             tooltip="Custom only: how many final steps use polish_guidance."),
                io.String.Input("guidance_list", default="", optional=True,
                                tooltip="Custom only, overrides guidance: one value per step, comma separated, "
                                "first = first (noisiest) step."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Inpainting: 1 = regenerate. Every 16 px block with any masked pixel is "
                              "regenerated; all other latents are kept exactly as the input (noised to each "
                              "step's level). Same size as the latent: use Ideogram 4 Inpaint Crop's mask. "
                              "A mask set on the latent by ComfyUI's Set Latent Noise Mask is used as well."),
                io.Float.Input("denoise", default=1.0, min=0.01, max=1.0, step=0.01, optional=True,
                               tooltip="1 = from pure noise (text-to-image; inpainting from scratch). Lower keeps "
                               "more of the input latent: as in KSampler, the last `steps` steps of a schedule "
                               "of steps / denoise steps run."),
            ],
            outputs=[io.Latent.Output("samples", display_name="latent")],
        )

    @classmethod
    def validate_inputs(cls, preset):
        return check_choice("preset", preset, [*PRESET_NAMES, CUSTOM])

    @classmethod
    def execute(cls, model, positive, latent, seed, preset, steps, mu, std, guidance, polish_guidance,
                polish_steps, unconditional_model=None, guidance_list="", mask=None, denoise=1.0) -> io.NodeOutput:
        batch, _, grid_h, grid_w = latent["samples"].shape
        width, height = grid_w * PIXELS_PER_TOKEN, grid_h * PIXELS_PER_TOKEN
        check_size(width, height)
        if mask is None:  # ComfyUI's Set Latent Noise Mask puts it into the latent, for KSampler
            mask = latent.get("noise_mask")
        init, tokens_mask = input_image(latent["samples"], mask, denoise)
        if preset == CUSTOM:
            if polish_steps > steps:
                raise ValueError(f"polish_steps ({polish_steps}) cannot exceed steps ({steps}); set polish_steps "
                                 f"to 0-{steps} or raise steps")
            plan = custom_plan(width, height, steps, mu, std, guidance, polish_guidance, polish_steps,
                               parse_guidance_list(guidance_list or "", steps), denoise=denoise)
        elif preset in PRESET_NAMES:
            plan = preset_plan(PRESET_NAMES[preset], width, height, denoise)
        else:
            raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join([*PRESET_NAMES, CUSTOM])}")

        features, counts = conditioning_features(positive)
        if features.shape[0] == 1 and batch > 1:  # one caption for the whole batch
            features, counts = features.expand(batch, -1, -1), counts * batch
        if features.shape[0] != batch:
            raise ValueError(f"{features.shape[0]} captions for a latent batch of {batch}")

        cond, uncond = unwrap_dit(model), None if unconditional_model is None else unwrap_dit(unconditional_model)
        patchers = [model] + ([] if unconditional_model is None else [unconditional_model])
        seq = max(counts) + grid_h * grid_w
        inference = dit_inference_bytes(cond, batch, seq, masked=min(counts) != max(counts))
        with oom_guard("sampling", f"{width}x{height}, batch {batch}"):
            # Both at once, as ComfyUI's own dual-model guider does: when they do not fit together,
            # ComfyUI loads each as far as the memory allows and streams the rest of its layers on
            # every call, instead of swapping whole transformers twice a step.
            comfy.model_management.load_models_gpu(patchers, memory_required=inference)

            previewer = latent_preview.prepare_callback(model, plan.steps)

            def on_step(step):
                faults.fault_point("step", step.index + 1)  # test-only, inert unless IDEOGRAM4_TEST_FAULT is set
                # Checked here, not left to the progress hook: ComfyUI 0.33's progress bar drops
                # updates without a preview that come within 100 ms of the last one, hook included.
                comfy.model_management.throw_exception_if_processing_interrupted()
                x0 = tokens_to_comfy(step.denoised, grid_h, grid_w)
                previewer(step.index, x0, tokens_to_comfy(step.latents, grid_h, grid_w), step.total)

            by_model = {id(cond): model, id(uncond): unconditional_model}

            def before_pass(dit):
                # Cancel also stops a step between its two model passes (each is long on a real model).
                comfy.model_management.throw_exception_if_processing_interrupted()
                # A no-op while both stay placed; reloads one that something evicted meanwhile.
                patcher = by_model[id(dit)]
                if patcher not in comfy.model_management.loaded_models():
                    comfy.model_management.load_models_gpu([patcher], memory_required=inference)

            noise = initial_noise(batch, grid_h * grid_w, seed)
            with torch.inference_mode():
                tokens = sample(cond, uncond, features, counts, grid_h, grid_w, plan, noise, callback=on_step,
                                before_pass=before_pass, device=model.load_device, init_latents=init,
                                mask=tokens_mask)
        samples = tokens_to_comfy(tokens, grid_h, grid_w).to(comfy.model_management.intermediate_device())
        return io.NodeOutput({"samples": samples, "ideogram4": True})
