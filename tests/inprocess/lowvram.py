"""Inside ComfyUI (0.3.75 or 0.33): partial loading of our models through ComfyUI's own code.
Run by tests/test_lowvram.py through comfy_inprocess.run_in_comfy; `args["cases"]` names the
cases below, `result` maps each to its records (the assertions live in the test).

The pack's loaders build the models; `LoadedModel.model_load(budget)` places them the way
`load_models_gpu` does with the budget it computes; the sampler node runs under ComfyUI's own
`load_models_gpu`. This machine has no GPU, so ComfyUI is shown a simulated one: the device
`cpu:0`, which torch puts on the CPU but ComfyUI treats as a load device of its own
(`torch.device("cpu", 0) != cpu`, so every layer it streams is really copied on every call), with
`get_free_memory` reporting a chosen capacity minus what ComfyUI has loaded there and
`is_device_cpu` false for it. Nothing of the pack is replaced: the placement decisions, the copies
and the numbers are ComfyUI's and ours.
"""

import dataclasses
import importlib
import tempfile
from pathlib import Path

import torch

import _checkpoint_factory as factory
import comfy.lora
import comfy.model_management as mm
import comfy.model_patcher

FAKE_GPU = torch.device("cpu", 0)


def pack_module(name: str):
    return importlib.import_module(f"{pack.__name__}.{name}")  # noqa: F821  (`pack` from the runner)


class SimulatedGPU:
    """ComfyUI's view of `FAKE_GPU`: `capacity` bytes, minus what its loaded models hold there."""

    def __init__(self, mm, capacity: int):
        self.mm, self.capacity = mm, capacity
        self.real_free, self.real_is_cpu = mm.get_free_memory, mm.is_device_cpu

    def free(self, dev=None, torch_free_too=False):
        if dev is None or torch.device(dev) != FAKE_GPU:
            return self.real_free(dev, torch_free_too)
        used = sum(m.model_loaded_memory() for m in self.mm.current_loaded_models if m.device == FAKE_GPU)
        free = self.capacity - used
        return (free, free) if torch_free_too else free

    def install(self):
        mm = self.mm
        mm.get_free_memory = self.free
        mm.is_device_cpu = lambda d: self.real_is_cpu(d) and torch.device(d) != FAKE_GPU
        mm.get_torch_device = lambda: FAKE_GPU
        mm.text_encoder_device = lambda: FAKE_GPU
        mm.vram_state = mm.VRAMState.NORMAL_VRAM
        mm.MIN_WEIGHT_MEMORY_RATIO = 0.0  # as on NVIDIA
        return self


def resident_modules(patcher):
    """(resident bytes by ComfyUI's own per-module count, streamed layer count) after a load."""
    resident, streamed = 0, 0
    for _, module in patcher.model.named_modules():
        if not any(True for _ in module.parameters(recurse=False)):
            continue
        if getattr(module, "comfy_cast_weights", False):
            streamed += 1
        else:
            resident += mm.module_size(module)
    return resident, streamed


def place(patcher, fraction: float):
    """Load `patcher` onto the simulated GPU as load_models_gpu does with the budget it computes:
    fraction 1 is a full load, 0 the 0.1-byte budget of --novram (every layer streamed), and 0.5 a
    partial load: the budget is bisected over ComfyUI's own placement until some but not all of
    the weights are resident (ComfyUI also reserves room for the largest streamed layer, which at
    these tiny sizes is a large share of the model, so a fixed budget could land on either end)."""
    def load(budget):
        loaded = mm.LoadedModel(patcher)
        loaded.model_load(budget)
        mm.current_loaded_models.insert(0, loaded)
        return loaded

    if fraction >= 1 or fraction <= 0:
        budget = 0 if fraction >= 1 else 0.1
        return load(budget), budget
    lo, hi, tried = 1, 4 * patcher.model_size(), []
    for _ in range(40):
        budget = (lo + hi) // 2
        trial = load(budget)
        resident = patcher.loaded_size() / patcher.model_size()
        if 0 < resident < 1:
            return trial, budget
        unplace(trial)
        tried.append((budget, resident))
        lo, hi = (budget, hi) if resident < fraction else (lo, budget)
    raise RuntimeError(f"no budget gives a partial load: (budget, resident fraction) {tried}")


def unplace(loaded):
    mm.current_loaded_models.remove(loaded)
    loaded.model_unload()


def placement_record(patcher, budget) -> dict:
    resident, streamed = resident_modules(patcher)
    return {"budget": float(budget), "model_size": patcher.model_size(), "loaded": patcher.loaded_size(),
            "resident_by_module": resident, "streamed_layers": streamed, "lowvram": bool(patcher.model.model_lowvram),
            "offload_buffer": int(getattr(patcher.model, "model_offload_buffer_memory", 0))}


# -------------------------------------------------------------------------------------------------
# Models, written as files the way each release stores them (tests/_checkpoint_factory.py) and
# loaded by the pack's own loader.


def dit_config():
    """The tests' tiny DiT with 6 layers: with 2, one layer is so large a share of the model that
    ComfyUI's placement has hardly any partial outcome."""
    from oracle_models import TINY

    return dataclasses.replace(TINY, num_layers=6)


def dit_files(folder: Path) -> dict[str, tuple[Path, torch.dtype]]:
    model = factory.reference_model(config=dit_config())
    comfy_fp8, meta = factory.comfy_fp8_state(model, "comfy_quant", prefix="")
    nf4_split = folder / "nf4_split" / "transformer" / "diffusion_pytorch_model.safetensors"
    factory.save(nf4_split, factory.nf4_state(model, naming="diffusers"))
    return {
        "bf16": (factory.save(folder / "bf16.safetensors", factory.plain_state(model, torch.bfloat16)), torch.bfloat16),
        "fp32": (factory.save(folder / "fp32.safetensors", factory.plain_state(model)), torch.float32),
        "fp8_per_row": (factory.save(folder / "fp8_row.safetensors", factory.official_fp8_state(model)), torch.float32),
        "fp8_per_tensor": (factory.save(folder / "fp8_tensor.safetensors", comfy_fp8, meta), torch.float32),
        "nf4": (factory.save(folder / "nf4.safetensors", factory.nf4_state(model)), torch.float32),
        "nf4_split": (nf4_split.parent, torch.float32),
    }


def dit_inputs(dit_config, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, dit_config.in_channels, 3, 4, generator=g)
    context = torch.randn(1, 5, dit_config.llm_features_dim, generator=g)
    return x, torch.tensor([0.7]), context


def run_dit(patcher, inputs):
    """The MODEL's diffusion model as ComfyUI calls it: conditional and unconditional pass."""
    x, t, context = inputs
    net = patcher.model.diffusion_model
    with torch.inference_mode():
        return torch.cat([net(x, t, context=context), net(x, t, context=None)])


# -------------------------------------------------------------------------------------------------
# Cases


def case_dit_partial(folder: Path) -> list[dict]:
    """Every weight kind at 100 %, 50 % and 0 % of the weights resident: outputs and accounting."""
    load_transformer = pack_module("ideogram4_core.files.checkpoint").load_transformer
    comfy_model = pack_module("nodes.comfy_model")
    wrap_dit, unwrap_dit = comfy_model.wrap_dit, comfy_model.unwrap_dit

    records = []
    for kind, (path, dtype) in dit_files(folder).items():
        component = "transformer" if kind == "nf4_split" else None
        plain = load_transformer(path, compute_dtype=dtype, component=component)
        inputs = dit_inputs(plain.config)
        with torch.inference_mode():  # the core model on its own, before ComfyUI touches it
            x, t, context = inputs
            patcher = wrap_dit(plain)
        stored = {k: v.clone() for k, v in unwrap_dit(patcher).state_dict().items()}
        outputs = {}
        for fraction in (1.0, 0.5, 0.0):
            loaded, budget = place(patcher, fraction)
            record = placement_record(patcher, budget)
            outputs[fraction] = run_dit(patcher, inputs)
            unplace(loaded)
            after = unwrap_dit(patcher).state_dict()
            record.update(kind=kind, fraction=fraction,
                          equal_to_full=bool(torch.equal(outputs[fraction], outputs[1.0])),
                          storage_unchanged=all(torch.equal(after[k], v) for k, v in stored.items()),
                          finite=bool(torch.isfinite(outputs[fraction]).all()))
            records.append(record)
    return records


def lora_for(keys_and_shapes: dict[str, tuple[int, int]], rank: int = 4, alpha: float = 2.0, seed: int = 3):
    """A LoRA state dict in the kohya/ComfyUI form (`<name>.lora_up.weight`, `.lora_down.weight`,
    `.alpha`) for the given model keys, and ComfyUI's name -> key map for comfy.lora.load_lora."""
    g = torch.Generator().manual_seed(seed)
    state, key_map = {}, {}
    for i, (key, (rows, cols)) in enumerate(keys_and_shapes.items()):
        name = f"lora_unet_{i}"
        state[f"{name}.lora_up.weight"] = torch.randn(rows, rank, generator=g) * 0.1
        state[f"{name}.lora_down.weight"] = torch.randn(rank, cols, generator=g) * 0.1
        state[f"{name}.alpha"] = torch.tensor(alpha)
        key_map[name] = key
    return state, key_map


def model_key(patcher, suffix: str) -> str:
    """The MODEL state-dict key ending in `suffix` (independent of the wrapper's key prefix)."""
    matches = [k for k in patcher.model.state_dict() if k.endswith(suffix)]
    assert len(matches) == 1, (suffix, matches)
    return matches[0]


def case_dit_lora(folder: Path) -> list[dict]:
    """A LoRA loaded by ComfyUI's own comfy.lora.load_lora and applied with clone().add_patches()
    on FP8 (per row), NF4, NF4 split (ConcatLinear parts) and fp32 layers, at 100 / 50 / 0 %
    resident; against an independent fp32 reference whose weights are the file's dequantised
    weights plus strength * alpha / rank * up @ down."""
    load_transformer = pack_module("ideogram4_core.files.checkpoint").load_transformer
    comfy_model = pack_module("nodes.comfy_model")
    wrap_dit, unwrap_dit = comfy_model.wrap_dit, comfy_model.unwrap_dit

    strength, rank, alpha = 0.8, 4, 2.0
    files = dit_files(folder)
    records = []
    for kind in ("fp8_per_row", "nf4", "nf4_split", "fp32"):
        path, dtype = files[kind]
        component = "transformer" if kind == "nf4_split" else None
        patcher = wrap_dit(load_transformer(path, compute_dtype=dtype, component=component))
        dit = unwrap_dit(patcher)
        inputs = dit_inputs(dit.config)
        # Square-ish layers: ComfyUI reserves 3 x fp32 of a patched streamed weight, which for the
        # tiny fused qkv alone would exceed the whole model and leave no partial placement.
        second = "layers.1.attention.qkv.parts.1.weight" if kind == "nf4_split" else "layers.1.attention.o.weight"
        h = dit.config.hidden_size
        targets = {"layers.0.feed_forward.w1.weight": (dit.config.intermediate_size, h), second: (h, h)}
        lora, names = lora_for({model_key(patcher, t): shape for t, shape in targets.items()}, rank, alpha)
        stored = {k: v.clone() for k, v in dit.state_dict().items()}

        loaded, _ = place(patcher, 1.0)
        before = run_dit(patcher, inputs)
        unplace(loaded)

        patched = patcher.clone()
        assert patched.add_patches(comfy.lora.load_lora(lora, names), strength) != []
        reference_dit = factory.dequantized_reference(path, dit.config)  # the file's own numbers, fp32
        with torch.no_grad():
            for i, target in enumerate(targets):
                delta = strength * alpha / rank * (lora[f"lora_unet_{i}.lora_up.weight"] @ lora[f"lora_unet_{i}.lora_down.weight"])
                name = target.replace("qkv.parts.1.", "qkv.")
                weight = reference_dit.get_parameter(name)
                rows = slice(h, 2 * h) if ".parts." in target else slice(None)
                weight[rows] += delta
        reference = wrap_dit(reference_dit.set_compute_dtype(dtype))
        loaded, _ = place(reference, 1.0)
        expected = run_dit(reference, inputs)
        unplace(loaded)

        outputs = {}
        for fraction in (1.0, 0.5, 0.0):
            loaded, budget = place(patched, fraction)
            record = placement_record(patched, budget)
            outputs[fraction] = run_dit(patched, inputs)
            grandchild = patched.clone()  # native nodes clone a MODEL before patching it further
            again = run_dit(grandchild, inputs)
            unplace(loaded)
            record.update(kind=kind, fraction=fraction,
                          equal_to_full=bool(torch.equal(outputs[fraction], outputs[1.0])),
                          max_error_vs_reference=float((outputs[fraction] - expected).abs().max()),
                          reference_scale=float(expected.abs().max()),
                          lora_changed_output=bool((outputs[fraction] - before).abs().max() > 1e-3),
                          clone_equal=bool(torch.equal(again, outputs[fraction])))
            records.append(record)
        loaded, _ = place(patcher, 0.0)  # the unpatched MODEL again, after the patched clone ran
        unpatched = run_dit(patcher, inputs)
        unplace(loaded)
        after = dit.state_dict()
        records.append({"kind": kind, "fraction": "original after patched clone",
                        "equal_to_unpatched": bool(torch.equal(unpatched, before)),
                        "storage_unchanged": all(torch.equal(after[k], v) for k, v in stored.items())})
    return records


def case_text_encoder(folder: Path) -> list[dict]:
    """The Qwen3-VL text encoder (tiny, real architecture) stored plain, FP8 and NF4, at 100 / 50 /
    0 % resident: features identical, accounting."""
    from text_encoder_fixtures import tiny_qwen3vl, write_hf_folder
    load_text_encoder = pack_module("ideogram4_core.text.encoder").load_text_encoder
    TextEncoderHandle = pack_module("nodes.loaders").TextEncoderHandle

    source = write_hf_folder(tiny_qwen3vl(), folder / "hf")
    caption = '{"high_level_description": "a red fox in the snow"}'
    records = []
    for quantize in ("none", "fp8", "nf4"):
        encoder = load_text_encoder(source, dtype=torch.float32, quantize=quantize)
        core = encoder.encode(caption).features if quantize != "nf4" else None  # core NF4: bitsandbytes' kernel
        handle = TextEncoderHandle(encoder)
        features = {}
        for fraction in (1.0, 0.5, 0.0):
            loaded, budget = place(handle.patcher, fraction)
            record = placement_record(handle.patcher, budget)
            features[fraction] = encoder.encode(caption).features
            unplace(loaded)
            record.update(kind=quantize, fraction=fraction,
                          equal_to_full=bool(torch.equal(features[fraction], features[1.0])),
                          equal_to_core=None if core is None else bool(torch.equal(features[fraction], core)))
            records.append(record)
    return records


def case_sampler_pair(folder: Path) -> list[dict]:
    """The sampler node with a conditional and an unconditional FP8 transformer on a simulated GPU
    that holds both (ample), and one with room for 1.5 of them (tight): same latents; in the tight
    case both are placed once for the whole run (one load_models_gpu call, nothing unloaded), one
    wholly and the other partly resident, instead of swapping them at every pass."""
    load_transformer = pack_module("ideogram4_core.files.checkpoint").load_transformer
    dit_inference_bytes = pack_module("ideogram4_core.memory").dit_inference_bytes
    comfy_model = pack_module("nodes.comfy_model")
    wrap_dit, unwrap_dit = comfy_model.wrap_dit, comfy_model.unwrap_dit
    Ideogram4Sampler = pack_module("nodes.sampling").Ideogram4Sampler

    config = dit_config()
    paths = [factory.save(folder / f"{role}.safetensors", factory.official_fp8_state(factory.reference_model(seed, config)))
             for seed, role in enumerate(("cond", "uncond"))]
    features = torch.randn(1, 5, config.llm_features_dim, generator=torch.Generator().manual_seed(5))
    positive = [[features, {"ideogram4_token_counts": [5]}]]
    latent = {"samples": torch.zeros(1, 128, 16, 16)}
    calls = {"load_models_gpu": 0, "partially_unload": 0, "detach": 0}

    def counted(owner, name):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            calls[name] += 1
            return original(*args, **kwargs)
        return original, wrapper

    records, results = [], {}
    for label, fit in (("ample", 4.0), ("tight", 1.5)):
        mm.unload_all_models()
        # bf16 compute: the per-call dequantisation room ComfyUI reserves is then half of fp32's
        models = [wrap_dit(load_transformer(p, compute_dtype=torch.bfloat16)) for p in paths]
        inference = dit_inference_bytes(unwrap_dit(models[0]), 1, 5 + 256, masked=False)
        reserve = max(inference + mm.extra_reserved_memory(), mm.minimum_inference_memory())
        capacity = reserve + int(fit * models[0].model_size())
        simulated = SimulatedGPU(mm, capacity).install()
        for key in calls:
            calls[key] = 0
        originals = {}
        for owner, name in ((mm, "load_models_gpu"), (comfy.model_patcher.ModelPatcher, "partially_unload"),
                            (comfy.model_patcher.ModelPatcher, "detach")):
            originals[(owner, name)], wrapper = counted(owner, name)
            setattr(owner, name, wrapper)
        try:
            out = Ideogram4Sampler.execute(model=models[0], positive=positive, latent=latent, seed=7, preset="Custom",
                                           steps=3, mu=0.0, std=1.75, guidance=7.0, polish_guidance=3.0,
                                           polish_steps=1, unconditional_model=models[1], guidance_list="")
        finally:
            for (owner, name), original in originals.items():
                setattr(owner, name, original)
        results[label] = out.args[0]["samples"]
        placed = {id(m.model): m for m in mm.current_loaded_models}
        records.append({"case": label, "capacity": capacity, "weights_room": capacity - reserve,
                        "model_size": models[0].model_size(), "calls": dict(calls),
                        "placed": [id(m) in placed for m in models],
                        "loaded": [m.loaded_size() for m in models],
                        "free_after": simulated.free(FAKE_GPU)})
    records.append({"case": "compare", "equal": bool(torch.equal(results["ample"], results["tight"]))})
    mm.unload_all_models()
    return records


SimulatedGPU(mm, capacity=64 * 2**30).install()
result = {}
with tempfile.TemporaryDirectory() as tmp:
    for name in args["cases"]:  # noqa: F821  (`args` from the runner)
        result[name] = globals()[f"case_{name}"](Path(tmp) / name)
mm.unload_all_models()
