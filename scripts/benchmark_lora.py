"""Cost of a LoRA per weight kind: time per sampling step with and without it, and its memory.

What it runs is what the node makes ComfyUI do (docs/lora.md):
- bf16 / fp32 weights: the update is merged into each patched weight once, when ComfyUI loads the
  model (timed here as `merge_s`); a step then costs what it costs without the LoRA.
- FP8 / NF4 weights: each patched layer dequantises its weight on every call and adds
  strength * alpha / rank * up @ down to it before the matmul (ComfyUI's LowVramPatch ->
  LoRAAdapter.calculate_weight, in the compute dtype). Emulated here with the same core calls the
  offloadable layers make (quant.FP8Linear.forward_with / quant.nf4_linear with a weight function),
  against the same path without one, so the difference is the LoRA's alone.
A step = the conditional pass (the LoRA's default target) + the unconditional pass (untouched).

    python scripts/benchmark_lora.py --tiny                      # CPU, seconds
    python scripts/benchmark_lora.py --device cuda --size 1024x1024 --rank 32 [--layers 8] --json lora.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ideogram4_core.lora import LoraWeights, linear_shapes, merge_  # noqa: E402
from ideogram4_core.model import quant  # noqa: E402
from ideogram4_core.model.packing import conditional_layout, image_only_layout, pack_image_tokens  # noqa: E402


def _benchmark_module():
    spec = importlib.util.spec_from_file_location("benchmark", ROOT / "scripts" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def random_lora(model: nn.Module, rank: int, seed: int = 0) -> dict[str, LoraWeights]:
    """A rank-`rank` update of every per-block linear (what ai-toolkit trains by default)."""
    gen = torch.Generator().manual_seed(seed)
    table = {}
    device = next(model.parameters()).device
    for key, (out, inp) in linear_shapes(model).items():
        if key.startswith("layers."):
            up = torch.randn(out, rank, generator=gen).to(device) * 0.01
            down = torch.randn(rank, inp, generator=gen).to(device) / inp**0.5
            table[key] = LoraWeights(up, down, float(rank))
    return table


def attach_per_call(model: nn.Module, table: dict[str, LoraWeights], strength: float | None) -> None:
    """Route every quantised layer through the offloadable path; with `strength`, add the LoRA to the
    dequantised weight on each call (what ComfyUI's LowVramPatch does). strength None: no LoRA."""
    for name, layer in model.named_modules():
        lora = table.get(f"{name}.weight")
        functions = []
        if strength is not None and lora is not None:
            def add(w, lora=lora):  # LoRAAdapter.calculate_weight in the weight's dtype
                up, down = lora.up.to(w.dtype), lora.down.to(w.dtype)
                return w + (strength * lora.scale) * (up @ down)
            functions = [add]
        if isinstance(layer, quant.FP8Linear):
            layer.forward = (lambda x, layer=layer, f=functions:
                             layer.forward_with(x, layer.weight, layer.weight_scale, layer.bias, f))
        elif quant.is_nf4_layer(layer):
            layer.forward = lambda x, layer=layer, f=functions: quant.nf4_linear(x, layer.weight, layer.bias, f)


def step_fn(cond, uncond, features, grid_h, grid_w, dtype):
    cond_layout = conditional_layout([features.shape[1]], grid_h, grid_w).to(features.device)
    uncond_layout = image_only_layout(1, grid_h, grid_w).to(features.device)
    latents = torch.randn(1, grid_h * grid_w, cond.config.in_channels, device=features.device)
    t = torch.tensor([0.5], device=features.device)

    def step():
        with torch.no_grad():
            x = pack_image_tokens(latents, cond_layout)
            cond(x, t, cond_layout.indicator, cond_layout.position_ids, features)
            uncond(latents, t, uncond_layout.indicator, uncond_layout.position_ids)
    return step


def timed(step, device, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="CPU smoke: tiny model, 256x256, fp32")
    p.add_argument("--model", choices=["full", "tiny", "medium"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["bf16", "fp32"])
    p.add_argument("--size", default=None, help="WIDTHxHEIGHT (default 1024x1024; 256x256 tiny)")
    p.add_argument("--layers", type=int)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--text-tokens", type=int, default=300)
    p.add_argument("--kinds", default="float,fp8,nf4")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    bench = _benchmark_module()
    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    cfg = bench.MODELS[args.model or ("tiny" if args.tiny else "full")]
    if args.layers:
        cfg = bench.dataclasses.replace(cfg, num_layers=args.layers)
    width, height = map(int, (args.size or ("256x256" if args.tiny else "1024x1024")).split("x"))
    grid_h, grid_w = height // 16, width // 16
    features = torch.randn(1, args.text_tokens, cfg.llm_features_dim, device=device).to(dtype)

    report = {"device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
              "dtype": str(dtype).removeprefix("torch."), "size": f"{width}x{height}", "layers": cfg.num_layers,
              "rank": args.rank, "text_tokens": args.text_tokens, "kinds": []}
    for kind in args.kinds.split(","):
        base = bench.random_transformer(cfg, device, dtype, seed=1)
        uncond = bench.random_transformer(cfg, device, dtype, seed=2)
        cond = base if kind == "float" else bench.quantized_copy(base, kind)
        if kind != "float":
            uncond = bench.quantized_copy(uncond, kind)
            del base
        table = random_lora(cond, args.rank)
        lora_bytes = sum(w.nbytes for w in table.values())
        largest_delta = max(w.shape[0] * w.shape[1] for w in table.values()) * torch.empty((), dtype=dtype).element_size()
        # Without and with alternate, one step each, so a loaded machine's drift hits both alike.
        if kind == "float":
            merged = bench.random_transformer(cfg, device, dtype, seed=1)
            start = time.perf_counter()
            merge_(merged, [(table, 1.0)])
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            merge_s = time.perf_counter() - start
            plain_step = step_fn(cond, uncond, features, grid_h, grid_w, dtype)
            lora_step = step_fn(merged, uncond, features, grid_h, grid_w, dtype)
            setups = {"without": lambda: None, "with": lambda: None}
        else:
            merge_s = 0.0
            attach_per_call(uncond, table, None)
            plain_step = lora_step = step_fn(cond, uncond, features, grid_h, grid_w, dtype)
            setups = {"without": lambda: attach_per_call(cond, table, None),
                      "with": lambda: attach_per_call(cond, table, 1.0)}
        times = {"without": [], "with": []}
        for i in range(args.warmup + args.repeats):
            for name, step in (("without", plain_step), ("with", lora_step)):
                setups[name]()
                elapsed = timed(step, device, 1, 0)
                if i >= args.warmup:
                    times[name].append(elapsed)
        without, with_lora = statistics.median(times["without"]), statistics.median(times["with"])
        row = {"kind": kind, "step_s_without": without, "step_s_with": with_lora, "ratio": with_lora / without,
               "merge_s": merge_s, "lora_mib": lora_bytes / 2**20, "per_call_temp_mib": largest_delta / 2**20,
               "patched_layers": len(table)}
        report["kinds"].append(row)
        print(f"{kind:6s} step {without * 1e3:9.1f} ms -> {with_lora * 1e3:9.1f} ms with LoRA (x{row['ratio']:.3f}); "
              f"LoRA {row['lora_mib']:.1f} MiB, per-call temporary {row['per_call_temp_mib']:.1f} MiB, "
              f"merge {merge_s:.2f} s", flush=True)
        del cond, uncond
        if kind == "float":
            del merged
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
