"""Reading Flux.2 VAE files: BFL or diffusers naming, config from tensor shapes, clear refusals,
and how the file's batch-norm statistics compare with the official constants.

Our modules (`vae.py`) use the BFL names (`decoder.up.{l}.block.{b}.conv1.weight`,
`decoder.mid.attn_1.q.weight`, `decoder.post_quant_conv.weight`, `bn.running_mean`, ...), the
names of ComfyUI's `flux2-vae.safetensors`. The official repos ship the VAE in diffusers naming
(`vae/diffusion_pytorch_model.safetensors`), renamed here on load (spec §F.4). Two traps:
- diffusers counts decoder up-blocks from the lowest resolution (`up_blocks.0` = most channels),
  BFL from the highest (`up.0` = full resolution), so the index is reversed: u -> levels - 1 - u;
- diffusers' mid-block attention projections are Linear (C, C); BFL's are 1x1 convs (C, C, 1, 1).

The network's widths and depths are read from tensor shapes, so any size loads; GroupNorm's group
count is invisible in shapes and is a parameter (32 for the real model).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import CheckpointError
from ..constants import LATENT_CHANNELS, VAE_CHANNELS
from ..latents import LATENT_SCALE, LATENT_SHIFT, comfy_to_tokens
from .safetensors_io import TensorReader, read_header
from ..vae import Flux2VAE, Flux2VAEConfig


class Flux2VAEFileError(ValueError):
    """The file (or state dict) is not a loadable Flux.2 VAE; the message says what it is instead."""

    def __init__(self, message: str, source: str | Path):
        super().__init__(message)
        self.source = str(source)


# ---------------------------------------------------------------------------------------------
# Names

_PREFIXES = ("first_stage_model.", "vae.")  # full-pipeline checkpoints nest the VAE under these
_ATTN_PROJECTIONS = {"to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out", "group_norm": "norm"}
_ATTN_WEIGHT = re.compile(r"^(encoder|decoder)\.mid\.attn_1\.(q|k|v|proj_out)\.weight$")


def vae_prefix(names: Iterable[str]) -> str:
    """The prefix a full-pipeline checkpoint puts before the VAE keys ("" when none)."""
    names = list(names)
    return next((p for p in _PREFIXES if any(n.startswith(p + "decoder.") for n in names)), "")


def is_diffusers_naming(names: Iterable[str]) -> bool:
    return any(".up_blocks." in n or ".mid_block." in n or ".down_blocks." in n for n in names)


def count_up_levels(names: Iterable[str]) -> int:
    """Number of decoder resolution levels, from either naming (needed to reverse up-block indices)."""
    levels = {int(m[1]) for n in names if (m := re.match(r"^decoder\.(?:up_blocks|up)\.(\d+)\.", n))}
    return max(levels) + 1 if levels else 0


def bfl_name(name: str, up_levels: int) -> str:
    """One diffusers tensor name -> its BFL name. Names already in BFL form come back unchanged."""
    if name.startswith("quant_conv."):
        return "encoder." + name
    if name.startswith("post_quant_conv."):
        return "decoder." + name
    name = re.sub(r"^(encoder|decoder)\.conv_norm_out\.", r"\1.norm_out.", name)
    name = re.sub(r"^(encoder|decoder)\.mid_block\.resnets\.(\d+)\.",
                  lambda m: f"{m[1]}.mid.block_{int(m[2]) + 1}.", name)
    name = re.sub(r"^(encoder|decoder)\.mid_block\.attentions\.0\.(to_q|to_k|to_v|to_out\.0|group_norm)\.",
                  lambda m: f"{m[1]}.mid.attn_1.{_ATTN_PROJECTIONS[m[2]]}.", name)
    name = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", name)
    name = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", name)
    name = re.sub(r"^decoder\.up_blocks\.(\d+)\.(resnets|upsamplers\.0)\.",
                  lambda m: f"decoder.up.{up_levels - 1 - int(m[1])}."
                            f"{'block' if m[2] == 'resnets' else 'upsample'}.", name)
    return re.sub(r"\.conv_shortcut\.", ".nin_shortcut.", name)


def to_bfl_names(names: Iterable[str]) -> dict[str, str]:
    """Map the VAE names of one state dict (either naming, maybe prefixed) to BFL names.

    With a pipeline prefix only the prefixed names are VAE names; the rest are left out."""
    names = list(names)
    prefix = vae_prefix(names)
    bare = {n: n[len(prefix):] for n in names if n.startswith(prefix)}
    levels = count_up_levels(bare.values()) if is_diffusers_naming(bare.values()) else 0
    # bfl_name leaves BFL names alone except top-level `quant_conv` / `post_quant_conv`, which
    # some BFL-named files keep outside the encoder/decoder.
    return {n: bfl_name(b, levels) for n, b in bare.items()}


def as_conv1x1_shape(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Attention projections stored as Linear (C, C) are 1x1-conv weights (C, C, 1, 1) in BFL form."""
    return (*shape, 1, 1) if len(shape) == 2 and _ATTN_WEIGHT.match(name) else tuple(shape)


def as_conv1x1(name: str, tensor: torch.Tensor) -> torch.Tensor:
    return tensor.reshape(as_conv1x1_shape(name, tuple(tensor.shape)))


def convert_diffusers_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The VAE tensors of a state dict (diffusers `AutoencoderKLFlux2` or BFL naming, maybe prefixed)
    in BFL naming; tensors are shared, not copied."""
    return {bfl: as_conv1x1(bfl, state_dict[name]) for name, bfl in to_bfl_names(state_dict).items()}


# ---------------------------------------------------------------------------------------------
# Loading


def load_vae(path: str | Path, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
             norm_groups: int | None = None) -> Flux2VAE:
    """Load a Flux.2 VAE from one safetensors file in BFL or diffusers naming, one tensor at a time.

    `norm_groups` None: the `norm_num_groups` of a diffusers `config.json` beside the file, else 32."""
    path = Path(path)
    if not path.is_file():
        raise Flux2VAEFileError(f"VAE file {path} does not exist.", path)
    if path.suffix.lower() != ".safetensors":
        raise Flux2VAEFileError(f"{path.name}: only .safetensors VAE files are read (pickle files are never "
                                f"loaded); expected a Flux.2 VAE such as flux2-vae.safetensors.", path)
    try:  # the bounded reader the DiT loader uses: validated header, no memory map of the file
        header = read_header(path)
        shapes = {name: info.shape for name, info in header.tensors.items()}
        groups = norm_groups or _groups_from_diffusers_config(path) or 32
        with TensorReader(header) as reader:
            return _build(shapes, reader.read, path.name, device, dtype, groups)
    except CheckpointError as error:
        raise Flux2VAEFileError(f"{path.name} is not a readable safetensors file ({error}).", path) from error


def vae_from_state_dict(state_dict: dict[str, torch.Tensor], *, device: torch.device | str | None = None,
                        dtype: torch.dtype = torch.float32, norm_groups: int = 32,
                        source: str = "VAE state dict") -> Flux2VAE:
    """Build from tensors already in memory (e.g. a VAE that ComfyUI loaded), either naming."""
    shapes = {name: tuple(t.shape) for name, t in state_dict.items()}
    device = device if device is not None else next(iter(state_dict.values()), torch.empty(0)).device
    return _build(shapes, state_dict.__getitem__, source, device, dtype, norm_groups)


def _groups_from_diffusers_config(path: Path) -> int | None:
    config = path.with_name("config.json")
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(data, dict) and "AutoencoderKL" in str(data.get("_class_name", "")):
        groups = data.get("norm_num_groups")
        return groups if isinstance(groups, int) and groups > 0 else None
    return None


def _build(shapes: dict[str, tuple[int, ...]], read: Callable[[str], torch.Tensor], source: str,
           device, dtype: torch.dtype, groups: int) -> Flux2VAE:
    renamed = to_bfl_names(shapes)  # file name -> BFL name
    bfl_shapes = {bfl: as_conv1x1_shape(bfl, shapes[name]) for name, bfl in renamed.items()}
    cfg = infer_config(bfl_shapes, groups, source, all_names=shapes)
    with torch.device("meta"):
        model = Flux2VAE(cfg)
    _check_tensors(model, bfl_shapes, source)
    for name, bfl in renamed.items():
        tensor = as_conv1x1(bfl, read(name))
        if tensor.is_floating_point():  # batch-norm statistics stay float32 whatever `dtype` is
            tensor = tensor.to(torch.float32 if bfl.startswith("bn.") else dtype)
        _assign(model, bfl, tensor.to(device))
    if model.bn is not None and model.bn.num_batches_tracked.is_meta:  # optional in files
        model.bn.num_batches_tracked = torch.zeros((), dtype=torch.long, device=device)
    return model.eval().requires_grad_(False)


def _assign(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name)
    if leaf in module._parameters:
        module._parameters[leaf] = nn.Parameter(tensor, requires_grad=False)
    else:
        module._buffers[leaf] = tensor


def infer_config(shapes: dict[str, tuple[int, ...]], norm_groups: int = 32, source: str = "VAE",
                 all_names: Iterable[str] = ()) -> Flux2VAEConfig:
    """Config from BFL-named tensor shapes; raises Flux2VAEFileError naming what the file looks like."""
    conv_in = shapes.get("decoder.conv_in.weight")
    if conv_in is None or len(conv_in) != 4 or conv_in[1] != VAE_CHANNELS:
        raise Flux2VAEFileError(f"{source} is not a Flux.2 VAE: it looks like {_describe(shapes, all_names)}. "
                                f"Expected a Flux.2 VAE ({VAE_CHANNELS} latent channels, 128-channel "
                                f"batch norm), e.g. flux2-vae.safetensors or the Ideogram 4 repo's "
                                f"vae/diffusion_pytorch_model.safetensors.", source)

    def levels(prefix: str) -> tuple[int, ...]:
        found = [tuple(shapes.get(f"{prefix}.{i}.block.0.conv1.weight", ())) for i in range(_count(shapes, prefix))]
        if not found or any(len(s) != 4 for s in found):
            raise Flux2VAEFileError(f"{source}: incomplete Flux.2 VAE, the res blocks of '{prefix}' are missing "
                                    f"or not 3x3 conv weights.", source)
        return tuple(s[0] for s in found)

    has_encoder = "encoder.conv_in.weight" in shapes
    cfg = Flux2VAEConfig(
        decoder_channels=levels("decoder.up"),
        encoder_channels=levels("encoder.down") if has_encoder else None,
        decoder_blocks=_count(shapes, "decoder.up.0.block"),
        encoder_blocks=_count(shapes, "encoder.down.0.block") if has_encoder else 0,
        image_channels=shapes.get("decoder.conv_out.weight", (3,))[0],
        norm_groups=norm_groups,
        batch_norm="bn.running_mean" in shapes,
    )
    widths = set(cfg.decoder_channels) | set(cfg.encoder_channels or ())
    if any(c % norm_groups for c in widths):
        raise Flux2VAEFileError(f"{source}: GroupNorm with {norm_groups} groups cannot split channel widths "
                                f"{sorted(widths)}; pass the group count the VAE was built with.", source)
    return cfg


def _count(shapes: Iterable[str], prefix: str) -> int:
    """How many consecutive indices `{prefix}.{i}.` exist."""
    names = tuple(shapes)
    return next(i for i in range(len(names) + 1) if not any(n.startswith(f"{prefix}.{i}.") for n in names))


def _describe(shapes: dict[str, tuple[int, ...]], all_names: Iterable[str]) -> str:
    names = list(all_names) or list(shapes)
    conv_in = shapes.get("decoder.conv_in.weight")
    if conv_in is not None and len(conv_in) == 5:
        return "a video VAE (3-D convolutions)"
    if conv_in is not None and len(conv_in) == 4:
        family = {4: " (SD 1.x / SDXL)", 16: " (Flux.1 / SD3)"}.get(conv_in[1], "")
        return f"a VAE with {conv_in[1]} latent channels{family}"
    if any("embed_image_indicator" in n for n in names):
        return "an Ideogram 4 diffusion transformer (DiT), not its VAE"
    if any(n.startswith(("double_blocks.", "single_blocks.")) or ".double_blocks." in n for n in names):
        return "a Flux diffusion transformer"
    if any("language_model." in n or "lm_head" in n or ".self_attn." in n for n in names):
        return "a text encoder"
    if any(n.startswith(("layers.", "model.diffusion_model.")) for n in names):
        return "a diffusion model"
    return f"something else ({len(names)} tensors, none named decoder.conv_in; e.g. {', '.join(names[:3])})"


def _check_tensors(model: Flux2VAE, shapes: dict[str, tuple[int, ...]], source: str) -> None:
    expected = {n: tuple(t.shape) for n, t in model.state_dict().items()}
    optional = {"bn.num_batches_tracked"}
    missing = sorted(set(expected) - set(shapes) - optional)
    unexpected = sorted(set(shapes) - set(expected))
    wrong = [f"{n} {shapes[n]} (expected {expected[n]})" for n in sorted(set(expected) & set(shapes))
             if shapes[n] != expected[n]]
    if missing or unexpected or wrong:
        parts = [f"{label} {len(items)}: {', '.join(items[:6])}{' ...' if len(items) > 6 else ''}"
                 for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
                 if items]
        raise Flux2VAEFileError(f"{source} looks like a Flux.2 VAE but its tensors do not fit one: "
                                + "; ".join(parts), source)


# ---------------------------------------------------------------------------------------------
# The file's batch-norm statistics vs the official constants (spec §E.2 open question)

# bf16-stored statistics are off by up to ~4e-3 at these magnitudes (< 2); the other statistics
# reported for Flux.2 differ from Ideogram's by ~0.07-0.09, so 5e-3 tells the two apart.
BATCH_NORM_MATCH_TOLERANCE = 5e-3
_ORDERS = {"token": "token (p_row, p_col, c)", "flux2": "Flux.2 (c, p_row, p_col)"}


@dataclass(frozen=True)
class BatchNormComparison:
    """Largest |difference| between the file's `bn` statistics, read in each candidate channel
    order, and the official constants: running_mean vs LATENT_SHIFT, sqrt(running_var + eps) vs
    LATENT_SCALE. Keys of both dicts: "token", "flux2"."""

    shift_error: dict[str, float]
    scale_error: dict[str, float]

    def matching_order(self, tolerance: float = BATCH_NORM_MATCH_TOLERANCE) -> str | None:
        return next((o for o in _ORDERS if max(self.shift_error[o], self.scale_error[o]) <= tolerance), None)

    def summary(self) -> str:
        order = self.matching_order()
        if order is not None:
            return (f"The VAE file's bn statistics equal the official Ideogram 4 constants in {_ORDERS[order]} "
                    f"order (max difference: shift {self.shift_error[order]:.1e}, scale "
                    f"{self.scale_error[order]:.1e}).")
        detail = "; ".join(f"{_ORDERS[o]} order: shift {self.shift_error[o]:.3g}, scale {self.scale_error[o]:.3g}"
                           for o in _ORDERS)
        return (f"The VAE file's bn statistics differ from the official Ideogram 4 constants (max difference, "
                f"{detail}). Decoding uses the official constants, not the file's statistics.")


def compare_batch_norm(vae: Flux2VAE) -> BatchNormComparison | None:
    """None when the file carries no `bn` statistics."""
    if vae.bn is None:
        return None
    mean = vae.bn.running_mean.detach().float().cpu()
    std = (vae.bn.running_var.detach().float().cpu() + vae.bn.eps).sqrt()

    def flux2_to_token(v: torch.Tensor) -> torch.Tensor:
        return comfy_to_tokens(v.view(1, LATENT_CHANNELS, 1, 1)).flatten()

    shift, scale = torch.tensor(LATENT_SHIFT), torch.tensor(LATENT_SCALE)
    candidates = {"token": (mean, std), "flux2": (flux2_to_token(mean), flux2_to_token(std))}
    return BatchNormComparison(
        shift_error={o: (m - shift).abs().max().item() for o, (m, _) in candidates.items()},
        scale_error={o: (d - scale).abs().max().item() for o, (_, d) in candidates.items()},
    )
