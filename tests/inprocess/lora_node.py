"""Inside ComfyUI (0.3.75 or 0.33): the Ideogram4LoraLoader node on every weight kind, against
diffusers 0.42.1 + peft on the same (dequantised) weights; removal; native LoraLoaderModelOnly.
Run by tests/test_lora_node.py through comfy_inprocess.run_in_comfy; `result["records"]` holds
one record per case (the assertions live in the test).

ComfyUI places each MODEL with its own `load_models_gpu` (on the CPU here), which merges the patches
of float layers and attaches the per-call patches of FP8 / NF4 layers (nodes/patcher.py)."""

import importlib
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

import _checkpoint_factory as factory
import comfy.model_management as mm
import comfy.sd
import comfy.utils
import folder_paths
import lora_fixtures as lf
from diffusers.pipelines.ideogram4.pipeline_ideogram4 import Ideogram4Pipeline
from oracle_models import TINY, diffusers_transformer

CFG = TINY  # in_channels 128: the MODEL takes (B, 128, h, w) latents
folder = Path(out_dir)  # noqa: F821  (from the runner)


def pack_module(name: str):
    return importlib.import_module(f"{pack.__name__}.{name}")  # noqa: F821


checkpoint = pack_module("ideogram4_core.files.checkpoint")
comfy_model = pack_module("nodes.comfy_model")
lora_node = pack_module("nodes.lora")
keys = pack_module("ideogram4_core.model.keys")
latents = pack_module("ideogram4_core.latents")
packing = pack_module("ideogram4_core.model.packing")

# ---------------------------------------------------------------------------------------------
# Files: one model written in every release's format, and LoRAs in the loras folder.

model = factory.reference_model(seed=41, config=CFG)
comfy_fp8, fp8_meta = factory.comfy_fp8_state(model, "comfy_quant", prefix="")
nf4_split = folder / "nf4_split" / "transformer" / "diffusion_pytorch_model.safetensors"
factory.save(nf4_split, factory.nf4_state(model, naming="diffusers"))
FILES = {
    "bf16": factory.save(folder / "bf16.safetensors", factory.plain_state(model, torch.bfloat16)),
    "fp32": factory.save(folder / "fp32.safetensors", factory.plain_state(model)),
    "fp8_per_row": factory.save(folder / "fp8_row.safetensors", factory.official_fp8_state(model)),
    "fp8_per_tensor": factory.save(folder / "fp8_tensor.safetensors", comfy_fp8, fp8_meta),
    "nf4": factory.save(folder / "nf4.safetensors", factory.nf4_state(model)),
    "nf4_split": nf4_split.parent,
}
CASES = [(kind, torch.float32) for kind in FILES if kind != "bf16"] + [
    ("bf16", torch.bfloat16), ("fp8_per_row", torch.bfloat16), ("nf4", torch.bfloat16)]

loras_dir = folder / "loras"
loras_dir.mkdir()
folder_paths.folder_names_and_paths["loras"] = ([str(loras_dir)], {".safetensors"})
UPDATES = {"kohya": lf.fused_update(CFG, seed=7), "onetrainer": lf.split_update(CFG, seed=8)}
for fmt, update in UPDATES.items():
    state, metadata = lf.write_format(update, fmt)
    save_file(state, str(loras_dir / f"{fmt}.safetensors"), metadata=metadata)
LORA_SETS = {  # name -> [(file format, strength)], the node chained in this order
    "kohya": [("kohya", 1.0)],
    "onetrainer_half": [("onetrainer", 0.5)],
    "chained": [("kohya", 1.0), ("onetrainer", 0.5)],
}

# ---------------------------------------------------------------------------------------------
# One forward pass the way ComfyUI's samplers call the MODEL, and diffusers' on the same tokens.

GRID, TEXT_LEN, SIGMA = (3, 4), 5, 0.3
gen = torch.Generator().manual_seed(3)
X = torch.randn(1, CFG.in_channels, *GRID, generator=gen)
CONTEXT = torch.randn(1, TEXT_LEN, CFG.llm_features_dim, generator=gen)


def run_ours(patcher) -> torch.Tensor:
    mm.load_models_gpu([patcher])
    with torch.inference_mode():
        out = patcher.model.diffusion_model(X, torch.tensor([SIGMA]), context=CONTEXT)
    return -latents.comfy_to_tokens(out.float())  # velocity in token layout


def run_diffusers(ref) -> torch.Tensor:
    layout = packing.conditional_layout([TEXT_LEN], *GRID)
    x = packing.pack_image_tokens(latents.comfy_to_tokens(X), layout)
    feats = packing.pack_text_features(CONTEXT, layout)
    pos, seg, ind = Ideogram4Pipeline._prepare_ids([TEXT_LEN], *GRID, TEXT_LEN, torch.device("cpu"))
    dtype = next(ref.parameters()).dtype
    with torch.no_grad():
        out = ref(x.to(dtype), torch.tensor([1.0 - SIGMA], dtype=dtype), feats.to(dtype), pos, seg, ind, return_dict=False)[0]
    return out[:, layout.text_len:].float()


def oracle_pipeline(kind, dtype):
    """diffusers' transformer holding the file's own (dequantised) numbers, in a pipeline."""
    reference = factory.dequantized_reference(FILES[kind], CFG)
    ref = diffusers_transformer(CFG)
    ref.load_state_dict(keys.original_to_diffusers(reference.state_dict()))
    pipe = Ideogram4Pipeline(scheduler=None, vae=None, text_encoder=None, tokenizer=None,
                             transformer=ref.to(dtype).eval(), unconditional_transformer=None)
    return pipe


def node_chain(patcher, lora_set, uncond=None, strength_uncond=0.0):
    for fmt, strength in LORA_SETS[lora_set]:
        patcher, uncond = lora_node.Ideogram4LoraLoader.execute(
            patcher, f"{fmt}.safetensors", strength_cond=strength, strength_uncond=strength_uncond,
            unconditional_model=uncond).args
    return patcher, uncond


records = []
for kind, dtype in CASES:
    component = "transformer" if kind == "nf4_split" else None
    base = comfy_model.wrap_dit(checkpoint.load_transformer(FILES[kind], compute_dtype=dtype, component=component))
    stored = {k: v.clone() for k, v in comfy_model.unwrap_dit(base).state_dict().items()}
    before = run_ours(base)
    pipe = oracle_pipeline(kind, dtype)
    plain_ref = run_diffusers(pipe.transformer)
    fp32_pipe = oracle_pipeline(kind, torch.float32)
    for lora_set in LORA_SETS:
        patched, _ = node_chain(base, lora_set)
        got = run_ours(patched)
        names = []
        for i, (fmt, strength) in enumerate(LORA_SETS[lora_set]):
            for p in (pipe, fp32_pipe):
                p.load_lora_weights(lf.oracle_state(UPDATES[fmt]), adapter_name=f"a{i}")
            names.append(f"a{i}")
        strengths = [s for _, s in LORA_SETS[lora_set]]
        pipe.set_adapters(names, adapter_weights=strengths)
        fp32_pipe.set_adapters(names, adapter_weights=strengths)
        expected, expected_fp32 = run_diffusers(pipe.transformer), run_diffusers(fp32_pipe.transformer)
        pipe.unload_lora_weights()
        fp32_pipe.unload_lora_weights()
        after = run_ours(base)  # the unpatched MODEL again, after its patched clone ran
        records.append(dict(
            kind=kind, dtype=str(dtype).removeprefix("torch."), lora=lora_set,
            max_diff=float((got - expected).abs().max()),
            mean_diff=float((got - expected).abs().mean()),
            # the oracle's own bf16 error (bf16 oracle vs fp32 oracle): the scale of bf16 rounding
            oracle_bf16_error=float((expected - expected_fp32).abs().max()),
            ours_vs_fp32_oracle=float((got - expected_fp32).abs().max()),
            effect=float((expected - plain_ref).abs().max()),
            scale=float(expected.abs().max()),
            removed_bit_identical=bool(torch.equal(after, before)),
            storage_unchanged=all(torch.equal(comfy_model.unwrap_dit(base).state_dict()[k], v)
                                  for k, v in stored.items()),
        ))
    # Native LoraLoaderModelOnly (comfy.sd.load_lora_for_models) with the same kohya file.
    lora_sd = comfy.utils.load_torch_file(str(loras_dir / "kohya.safetensors"), safe_load=True)
    record = dict(kind=kind, dtype=str(dtype).removeprefix("torch."), lora="native_kohya")
    try:
        native, _ = comfy.sd.load_lora_for_models(base, None, lora_sd, 1.0, 0.0)
    except ValueError as err:
        record["native_error"] = str(err)
    else:
        ours, _ = node_chain(base, "kohya")
        native_out, ours_out = run_ours(native), run_ours(ours)
        record.update(native_patched=len(native.patches), ours_patched=len(ours.patches),
                      native_bit_identical=bool(torch.equal(native_out, ours_out)))
    records.append(record)
    mm.unload_all_models()

# Both branches, and what the node says for bad input.
base = comfy_model.wrap_dit(checkpoint.load_transformer(FILES["fp32"], compute_dtype=torch.float32))
uncond = comfy_model.wrap_dit(checkpoint.load_transformer(FILES["fp32"], compute_dtype=torch.float32))
cond_out, uncond_out = node_chain(base, "kohya", uncond=uncond)
both_cond, both_uncond = node_chain(base, "kohya", uncond=uncond, strength_uncond=0.5)
records.append(dict(case="branches", uncond_untouched=uncond_out is uncond, cond_patched=len(cond_out.patches),
                    uncond_patched_when_asked=len(both_uncond.patches)))

# The converted file is cached; a file replaced on disk is read again.
kohya_path = loras_dir / "kohya.safetensors"
shapes = pack_module("ideogram4_core.lora").linear_shapes(comfy_model.unwrap_dit(base))
first, again = lora_node.cached_lora(kohya_path, shapes), lora_node.cached_lora(kohya_path, shapes)
stat = kohya_path.stat()
os.utime(kohya_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
records.append(dict(case="cache", same_object=first is again,
                    reread_after_change=lora_node.cached_lora(kohya_path, shapes) is not first))

errors = {}
(loras_dir / "flux.safetensors").write_bytes(b"")
save_file({"diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight": torch.zeros(4, 8),
           "diffusion_model.double_blocks.0.img_attn.qkv.lora_B.weight": torch.zeros(8, 4)},
          str(loras_dir / "flux.safetensors"))
(loras_dir / "pickled.pt").write_bytes(b"\x80\x04junk")
for name in ("flux.safetensors", "pickled.pt", "../fp32.safetensors"):
    try:
        lora_node.Ideogram4LoraLoader.execute(base, name)
        errors[name] = None
    except Exception as err:  # noqa: BLE001  (the message is what the test checks)
        errors[name] = f"{type(err).__name__}: {err}"
    errors[name + " (validate)"] = lora_node.Ideogram4LoraLoader.validate_inputs(lora_name=name)
errors["listed"] = lora_node.list_models("loras", ())
result = {"records": records, "errors": errors}
