"""Tiny random Ideogram 4 model files for a real ComfyUI server, laid out as users place the real
ones, plus the diffusers pipeline (the oracle) holding the very same weights."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from ideogram4_core.model.keys import diffusers_to_original
from ideogram4_core.latents import LATENT_SCALE, LATENT_SHIFT
from ideogram4_core.files.vae_file import convert_diffusers_state_dict
from oracle_models import TINY, diffusers_transformer, randomize_
from text_encoder_fixtures import TINY_TEXT_CONFIG, reference_tokenizer_folder, tiny_qwen3vl, write_hf_folder

COND_FILE = "tiny_ideogram4_cond.safetensors"
UNCOND_FILE = "tiny_ideogram4_uncond.safetensors"
TEXT_ENCODER_FOLDER = "tiny_qwen3vl"
VAE_FILE = "tiny_flux2_vae.safetensors"
# The text encoder's 13 taps of its hidden width feed the DiT's text projection.
TINY_DIT = replace(TINY, llm_features_dim=13 * TINY_TEXT_CONFIG["hidden_size"])


@dataclass
class TinyModels:
    cond: object  # diffusers Ideogram4Transformer2DModel
    uncond: object
    text_encoder: object  # transformers Qwen3VLModel
    vae: object  # diffusers AutoencoderKLFlux2
    tokenizer_dir: Path


def full_size_flux2_vae(seed: int = 0):
    """ComfyUI's VAELoader only builds the real Flux.2 architecture (128-512 channels), so the VAE is
    full size (84M parameters) with random weights. This one is the oracle's: its batch-norm buffers
    hold the official latent constants in token order so diffusers' decode equals the official one
    (DESIGN §5). The file the server reads carries other statistics (`_unofficial_bn`)."""
    from diffusers import AutoencoderKLFlux2

    vae = AutoencoderKLFlux2()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in**0.5)
        vae.bn.running_mean.copy_(torch.tensor(LATENT_SHIFT))
        vae.bn.running_var.copy_(torch.tensor(LATENT_SCALE) ** 2 - vae.config.batch_norm_eps)
    return vae.eval()


def write_tiny_models(models_dir: Path, work_dir: Path) -> TinyModels:
    """Write a conditional and an unconditional DiT (single files, original naming), a Qwen3-VL
    folder and a Flux.2 VAE (BFL naming, as flux2-vae.safetensors) into ComfyUI's model folders."""
    cond = diffusers_transformer(TINY_DIT, seed=21)
    uncond = diffusers_transformer(TINY_DIT, seed=22)
    for model, name in ((cond, COND_FILE), (uncond, UNCOND_FILE)):
        state = {k: v.contiguous() for k, v in diffusers_to_original(model.state_dict()).items()}
        save_file(state, str(models_dir / "diffusion_models" / name))

    text_encoder = tiny_qwen3vl(seed=23)
    write_hf_folder(text_encoder, models_dir / "text_encoders" / TEXT_ENCODER_FOLDER)

    vae = full_size_flux2_vae(seed=24)
    bfl = _unofficial_bn(convert_diffusers_state_dict(vae.state_dict()))
    save_file({k: v.contiguous() for k, v in bfl.items()}, str(models_dir / "vae" / VAE_FILE))

    tokenizer_dir = reference_tokenizer_folder(work_dir / "reference_tokenizer")
    return TinyModels(cond, uncond, text_encoder, vae, tokenizer_dir)


def _unofficial_bn(state: dict) -> dict:
    """The server's VAE file gets bn statistics off the official constants on every channel (mean by
    0.1 or more, std 10 % larger, like the stock Flux.2 file of spec §E.2): our decode must use the
    constants, so its pixels still equal the oracle's, and a decode that read the file's bn fails."""
    gen = torch.Generator().manual_seed(25)
    mean = torch.tensor(LATENT_SHIFT) - 0.1 - 0.05 * torch.rand(128, generator=gen)
    std = torch.tensor(LATENT_SCALE) * 1.1
    return dict(state, **{"bn.running_mean": mean, "bn.running_var": std**2 - 1e-4})


def oracle_pipeline(models: TinyModels):
    from diffusers import FlowMatchEulerDiscreteScheduler, Ideogram4Pipeline
    from transformers import AutoTokenizer

    return Ideogram4Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=models.vae,
        text_encoder=models.text_encoder,
        tokenizer=AutoTokenizer.from_pretrained(models.tokenizer_dir),
        transformer=models.cond,
        unconditional_transformer=models.uncond,
    )


__all__ = ["COND_FILE", "UNCOND_FILE", "TEXT_ENCODER_FOLDER", "VAE_FILE", "TinyModels", "write_tiny_models",
           "oracle_pipeline", "randomize_"]
