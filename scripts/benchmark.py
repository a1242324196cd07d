"""Time one denoising step of our DiT pair against diffusers' Ideogram4Transformer2DModel pair holding
the SAME (random) weights, in one process, after checking that both give the same velocities.

One step = conditional pass on [text][image] tokens + unconditional pass on the image tokens + the fp32
guidance blend, exactly as each sampler runs it: ours through `sampling.GuidedVelocity` (text
embedding and rotary tables cached per run, no padding, no mask for one caption), diffusers through
the body of `Ideogram4Pipeline.__call__`'s loop, "default" (text padded to max_sequence_length=2048,
boolean mask always) and "tuned" (max_sequence_length = caption length).

    python scripts/benchmark.py --tiny                                     # CPU smoke, seconds
    python scripts/benchmark.py --layers 2 --size 512x512 --comfyui /path/to/ComfyUI   # + ComfyUI core
    python scripts/benchmark.py --device cuda --size 1024x1024 --size 2048x2048 --text-tokens 300 \
        --quant fp8 --quant nf4 [--compile] --json bench.json                # full size, bf16

FLOPs (useful work of one step, the same count for every implementation so TFLOP/s compares speed;
d = hidden 4608, f = FFN 12288, F = text features 53248, a = AdaLN 512, C = 128 channels, n = layers):
    pass(L, P) = n * [2 L d (3d + d + 3f)        qkv, o, w1, w3, w2
                      + 4 L^2 d]                  Q K^T and P V over all heads
                 + 4 L d C                        input_proj, final linear
                 + 2 P F d                        llm_cond_proj on P projected text rows
                 + 4 d^2 + 2 d a + 8 n a d + 2 a d   per-sample timestep / AdaLN matmuls
    step = pass(T + N, T) + pass(N, 0)            T caption tokens, N = (H/16)(W/16) image tokens
Diffusers also executes pass(2048 + N, 2048 + N) (default) or pass(T + N, T + N) (tuned) plus
pass(N, N): padding rows and a projection of every all-zero row; reported as executed_tflop.

With --comfyui, ComfyUI core's native `comfy.ldm.ideogram4` model (ComfyUI 0.33+) is imported from
that tree and run on the same weights (its parameters are ours, assigned), the way ComfyUI's
DualModelGuider calls it: conditional pass with the caption, image-only pass with context None.
Core projects the caption through llm_cond_proj on every conditional pass: pass(T + N, T) + pass(N, 0).
Ours executes that less the caption's projection (once per run) and the last block's output projection
and feed-forward on the caption rows (nothing reads them): minus 2 T F d + 2 T d (d + 3 f).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ideogram4_core.latents import comfy_to_tokens, tokens_to_comfy  # noqa: E402
from ideogram4_core.model.keys import original_to_diffusers  # noqa: E402
from ideogram4_core.model.transformer import Ideogram4Config, Ideogram4Transformer  # noqa: E402
from ideogram4_core.sampling.sampler import GuidedVelocity  # noqa: E402

MODELS = {
    "full": Ideogram4Config(),
    # Tiny: CI smoke. Medium: CPU profiling with the real head size and roughly the real width ratios.
    "tiny": Ideogram4Config(num_layers=2, num_heads=2, head_dim=128, intermediate_size=512, adaln_dim=32,
                            llm_features_dim=13 * 32),
    "medium": Ideogram4Config(num_layers=2, num_heads=4, head_dim=256, intermediate_size=2752, adaln_dim=128,
                              llm_features_dim=13 * 912),
}
# Dense bf16 tensor-core peaks (TFLOP/s, fp32 accumulate, no sparsity) from vendor data sheets; first
# substring of torch.cuda.get_device_name() that matches wins.
PEAK_BF16_TFLOPS = [
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("GH200", 989.4), ("H200", 989.4), ("H100", 989.4),
    ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.0), ("RTX 4090", 165.2), ("RTX 3090", 71.0), ("L4", 121.0),
]
DIFFUSERS_DEFAULT_MAX_SEQ = 2048
GIB = 2**30


def pass_flops(cfg: Ideogram4Config, tokens: int, text_rows: int) -> int:
    d, f, a, n = cfg.hidden_size, cfg.intermediate_size, cfg.adaln_dim, cfg.num_layers
    blocks = n * (2 * tokens * d * (4 * d + 3 * f) + 4 * tokens**2 * d)
    per_sample = 4 * d * d + 2 * d * a + 8 * n * a * d + 2 * a * d
    return blocks + 4 * tokens * d * cfg.in_channels + 2 * text_rows * cfg.llm_features_dim * d + per_sample


def step_flops(cfg, text: int, image: int) -> int:
    return pass_flops(cfg, text + image, text) + pass_flops(cfg, image, 0)


def ours_skips(cfg, text: int) -> int:
    """Useful FLOPs our step does not execute: the caption's text projection (once per run, not per
    step) and, on the conditional pass, the last block's output projection and feed-forward on the
    caption rows (no one reads them: `forward(rows_from=)`)."""
    return 2 * text * cfg.llm_features_dim * cfg.hidden_size + 2 * text * cfg.hidden_size * (
        cfg.hidden_size + 3 * cfg.intermediate_size) * (cfg.num_layers > 0)


def peak_tflops(device: torch.device) -> tuple[str, float | None]:
    if device.type != "cuda":
        return platform.processor() or "cpu", None
    name = torch.cuda.get_device_name(device)
    return name, next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


def random_transformer(cfg, device, dtype, seed: int) -> Ideogram4Transformer:
    """Built on the meta device, materialised empty in `dtype`, then filled: no fp32 copy at full size.
    Values like tests/oracle_models.py: norm weights 1 +- 0.2 (no identity paths), others N(0, 1/fan_in)."""
    with torch.device("meta"):
        model = Ideogram4Transformer(cfg).to(dtype)
    model.to_empty(device=device).set_compute_dtype(dtype)
    gen = torch.Generator(device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.2, generator=gen)
            else:
                p.normal_(0.0, (p.shape[-1] if p.ndim > 1 else 16) ** -0.5, generator=gen)
    return model.requires_grad_(False).eval()


def twin_arguments(cfg: Ideogram4Config) -> dict:
    """Our config as the constructor arguments of diffusers' and of ComfyUI core's model (both
    take diffusers' names)."""
    return dict(in_channels=cfg.in_channels, num_layers=cfg.num_layers, attention_head_dim=cfg.head_dim,
                num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size, adaln_dim=cfg.adaln_dim,
                llm_features_dim=cfg.llm_features_dim, rope_theta=int(cfg.rope_theta),
                mrope_section=cfg.mrope_section, norm_eps=cfg.norm_eps)


def diffusers_twin(ours: Ideogram4Transformer):
    """diffusers' model whose parameters are views of ours (to_q/k/v are row slices of qkv): the same
    values at no extra memory."""
    from diffusers import Ideogram4Transformer2DModel

    cfg = ours.config
    with torch.device("meta"):
        ref = Ideogram4Transformer2DModel(**twin_arguments(cfg))
    ref.load_state_dict(original_to_diffusers(ours.state_dict()), strict=True, assign=True)
    device = next(ours.parameters()).device
    # Non-persistent buffer, fp32 as from_pretrained(torch_dtype=bf16) leaves it.
    ref.rotary_emb.inv_freq = 1.0 / cfg.rope_theta ** (
        torch.arange(0, cfg.head_dim, 2, dtype=torch.float32, device=device) / cfg.head_dim)
    return ref.requires_grad_(False).eval()


def quantized_copy(model: Ideogram4Transformer, kind: str) -> Ideogram4Transformer:
    """Our model with the loader's quantisation rule (files/checkpoint.py: per-block linears and
    llm_cond_proj, 99.5 % of the weights) applied through the project's quant layers."""
    from ideogram4_core.model import quant

    with torch.device("meta"):
        q = Ideogram4Transformer(model.config)
    q.set_compute_dtype(model.compute_dtype)
    source = dict(model.named_modules())
    for name, module in list(q.named_modules()):
        src = source[name]
        if isinstance(src, nn.Linear) and (name.startswith("layers.") or name == "llm_cond_proj"):
            bias = None if src.bias is None else src.bias.detach().clone()
            if kind == "fp8":
                layer = quant.FP8Linear(*quant.quantize_fp8_per_row(src.weight), bias)
            else:
                layer = quant.nf4_linear_from_float(src.weight, bias, model.compute_dtype, src.weight.device)
            parent, _, child = name.rpartition(".")
            setattr(q.get_submodule(parent), child, layer)
        else:
            for pname, p in src.named_parameters(recurse=False):
                setattr(module, pname, nn.Parameter(p.detach().clone(), requires_grad=False))
    return q.eval()


def resident_bytes(*models: nn.Module) -> int:
    """Bytes of distinct parameter/buffer storages, plus NF4 block statistics (not parameters)."""
    seen, total = set(), 0
    for model in models:
        for t in list(model.parameters()) + list(model.buffers()):
            key = t.untyped_storage().data_ptr()
            if key not in seen:
                seen.add(key)
                total += t.untyped_storage().nbytes()
            state = getattr(t, "quant_state", None)
            if state is not None and id(state) not in seen:
                seen.add(id(state))
                total += state.absmax.nbytes + state.code.nbytes
    return total


def comfy_core_twin(ours: Ideogram4Transformer):
    """ComfyUI core's Ideogram4Transformer2DModel (comfy/ldm/ideogram4, built with comfy.ops as
    ComfyUI builds it) whose parameters are ours: the same values at no extra memory."""
    from comfy.ldm.ideogram4.model import Ideogram4Transformer2DModel
    import comfy.ops

    with torch.device("meta"):
        core = Ideogram4Transformer2DModel(**twin_arguments(ours.config), dtype=ours.compute_dtype,
                                           operations=comfy.ops.disable_weight_init)
    core.load_state_dict(ours.state_dict(), strict=True, assign=True)
    return core.requires_grad_(False).eval()


def import_comfyui(comfy_dir: Path, device: torch.device) -> str:
    """Put a ComfyUI tree on the path as its main.py would set it up (CPU mode off a GPU, PyTorch
    SDPA attention like ours and like ComfyUI's default on CUDA); returns its version."""
    if not (comfy_dir / "comfy" / "ldm" / "ideogram4" / "model.py").is_file():
        raise SystemExit(f"{comfy_dir} has no comfy/ldm/ideogram4 (ComfyUI core's Ideogram 4 needs 0.33 or later)")
    sys.path.insert(0, str(comfy_dir))
    import comfy.cli_args

    comfy.cli_args.args.cpu = device.type == "cpu"
    comfy.cli_args.args.use_pytorch_cross_attention = True
    import comfy.model_management  # noqa: F401  (device set-up)
    namespace = {}
    exec((comfy_dir / "comfyui_version.py").read_text(), namespace)
    return namespace.get("__version__", "unknown")


class CoreStep:
    """One step through ComfyUI core's model as its guider runs it: latent layout (B, 128, h, w),
    sigma as the timestep (core turns it into 1 - sigma), output noise - x0 = -velocity; the caption
    features on the conditional pass, context None on the unconditional one."""

    def __init__(self, cond, uncond, features: torch.Tensor, grid_h: int, grid_w: int):
        self.cond, self.uncond, self.grid = cond, uncond, (grid_h, grid_w)
        self.features = features.to(cond.dtype)

    def _velocity(self, model, latents, t, context):
        x = tokens_to_comfy(latents, *self.grid).to(model.dtype)
        out = model(x, (1.0 - t).float(), context=context)
        return -comfy_to_tokens(out.float())

    def conditional(self, latents, t):
        return self._velocity(self.cond, latents, t, self.features)

    def unconditional(self, latents, t):
        return self._velocity(self.uncond, latents, t, None)

    def __call__(self, latents, t, guidance: float):
        w = torch.tensor(guidance, dtype=torch.float32, device=latents.device)
        return w * self.conditional(latents, t) + (1.0 - w) * self.unconditional(latents, t)


class DiffusersStep:
    """The body of diffusers' Ideogram4Pipeline denoising loop, with its per-run tensors prepared the
    way the pipeline prepares them before the loop."""

    def __init__(self, cond, uncond, features: torch.Tensor, grid_h: int, grid_w: int, max_seq: int):
        from diffusers.pipelines.ideogram4.pipeline_ideogram4 import Ideogram4Pipeline

        self.cond, self.uncond, self.max_seq = cond, uncond, max_seq
        batch, n_text, dim = features.shape
        n, device = grid_h * grid_w, features.device
        self.ids = Ideogram4Pipeline._prepare_ids([n_text] * batch, grid_h, grid_w, max_seq, device)
        padded = torch.zeros(batch, max_seq, dim, device=device)
        padded[:, max_seq - n_text:] = features
        self.llm = torch.cat([padded, torch.zeros(batch, n, dim, device=device)], 1).to(cond.dtype)
        self.neg_llm = torch.zeros(batch, n, dim, dtype=uncond.dtype, device=device)
        self.text_z_padding = torch.zeros(batch, max_seq, cond.config.in_channels, device=device)

    def conditional(self, latents, t):
        pos, seg, ind = self.ids
        z = torch.cat([self.text_z_padding, latents], dim=1).to(self.cond.dtype)
        out = self.cond(z, t.to(self.cond.dtype), self.llm, pos, seg, ind, return_dict=False)[0]
        return out[:, self.max_seq:].to(torch.float32)

    def unconditional(self, latents, t):
        pos, seg, ind = (x[:, self.max_seq:] for x in self.ids)
        z = latents.to(self.uncond.dtype)
        return self.uncond(z, t.to(self.uncond.dtype), self.neg_llm, pos, seg, ind, return_dict=False)[0].float()

    def __call__(self, latents, t, guidance: float):
        w = torch.tensor(guidance, dtype=torch.float32, device=latents.device)
        return w * self.conditional(latents, t) + (1.0 - w) * self.unconditional(latents, t)


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got - expected).abs().max() / expected.abs().max().clamp(min=1e-30)).item()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(step, latents, t, device) -> tuple[float, int]:
    """Seconds for one step and the memory it allocated above what was there when it started."""
    sync(device)
    base = 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    start = time.perf_counter()
    step(latents, t, 7.0)
    sync(device)
    elapsed = time.perf_counter() - start
    return elapsed, (torch.cuda.max_memory_allocated(device) - base) if device.type == "cuda" else 0


def memory_now(device) -> int:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


def run_case(args, cfg, pairs, width: int, height: int, device, dtype) -> dict:
    grid_h, grid_w = height // 16, width // 16
    n_img, n_text = grid_h * grid_w, args.text_tokens
    gen = torch.Generator(device).manual_seed(1)
    features = torch.randn(1, n_text, cfg.llm_features_dim, generator=gen, device=device)
    latents = torch.randn(1, n_img, cfg.in_channels, generator=gen, device=device)
    t = torch.tensor([0.5], device=device)

    steps, state_bytes = {}, {}
    for name, (cond, uncond) in pairs.items():
        before = memory_now(device)
        if name.startswith("diffusers"):
            max_seq = DIFFUSERS_DEFAULT_MAX_SEQ if name == "diffusers-default" else n_text
            steps[name] = DiffusersStep(cond, uncond, features, grid_h, grid_w, max(max_seq, n_text))
        elif name == "comfyui-core":
            steps[name] = CoreStep(cond, uncond, features, grid_h, grid_w)
        else:
            steps[name] = GuidedVelocity(cond, uncond, features, [n_text], grid_h, grid_w)
        state_bytes[name] = memory_now(device) - before

    # Correctness first (this also warms every path up): same inputs, same velocities.
    outputs = {name: (s.conditional(latents, t), s.unconditional(latents, t)) for name, s in steps.items()}
    tol = args.check_tol if args.check_tol is not None else (1e-4 if dtype == torch.float32 else 5e-2)
    checks = []
    for name, (v_cond, v_uncond) in outputs.items():
        if name == "ours":
            continue
        ref_cond, ref_uncond = outputs["ours"]
        err = max(relative_error(v_cond, ref_cond), relative_error(v_uncond, ref_uncond))
        informative = name.startswith("ours-")  # quantisation error, not an implementation difference
        # Core keeps t in fp32 (the reference rounds it to the compute dtype) and builds its rotary
        # tables in another order: in bf16 that is more than summation-order noise.
        informative |= name == "comfyui-core" and dtype != torch.float32
        checks.append({"impl": name, "vs": "ours", "max_rel_error": err, "tolerance": None if informative else tol,
                       "ok": informative or err <= tol})

    bad = [c for c in checks if not c["ok"]]
    if bad:  # a benchmark of wrong code is worthless: stop before spending time on it
        raise SystemExit(f"velocities differ at {width}x{height}: {bad}")

    for _ in range(args.warmup):
        for step in steps.values():
            step(latents, t, 7.0)
    times = {name: [] for name in steps}
    extra = {name: 0 for name in steps}
    names = list(steps)
    for r in range(args.repeats):  # interleaved, rotating the order so no implementation always goes first
        for name in names[r % len(names):] + names[: r % len(names)]:
            seconds, peak = time_step(steps[name], latents, t, device)
            times[name].append(seconds)
            extra[name] = max(extra[name], peak)

    useful = step_flops(cfg, n_text, n_img)
    executed = {"diffusers-default": pass_flops(cfg, DIFFUSERS_DEFAULT_MAX_SEQ + n_img, DIFFUSERS_DEFAULT_MAX_SEQ + n_img),
                "diffusers-tuned": pass_flops(cfg, n_text + n_img, n_text + n_img)}
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    results = []
    for name in names:
        cond, uncond = pairs[name]
        weights = resident_bytes(cond, uncond)
        executed_flops = executed.get(name, pass_flops(cfg, n_text + n_img, n_text)) + pass_flops(
            cfg, n_img, n_img if name.startswith("diffusers") else 0) - (ours_skips(cfg, n_text) if name.startswith("ours") else 0)
        tflops = useful / medians[name] / 1e12
        results.append({
            "impl": name, "median_s": medians[name], "times_s": times[name], "useful_tflops": tflops,
            "peak_fraction": tflops / args.peak if args.peak else None,
            "executed_tflop": executed_flops / 1e12, "weights_gib": weights / GIB,
            "peak_gib": (weights + state_bytes[name] + extra[name]) / GIB if device.type == "cuda" else None,
            "speedup_vs": {other: medians[other] / medians[name]
                           for other in ("diffusers-default", "diffusers-tuned", "comfyui-core", "ours") if other in medians},
        })
    return {"size": f"{width}x{height}", "grid": [grid_h, grid_w], "text_tokens": n_text, "image_tokens": n_img,
            "useful_tflop": useful / 1e12, "checks": checks, "results": results}


def markdown(report: dict) -> str:
    lines = [f"device: {report['device_name']} ({report['device']}), {report['dtype']}, model {report['model']}, "
             f"compile: {report['compile']}, repeats {report['repeats']} (median), torch {report['torch']}, "
             f"diffusers {report['diffusers']}" + (f", ComfyUI {report['comfyui']}" if report.get("comfyui") else "")]
    if report["cpu_peak_rss_gib"] is not None:
        lines.append(f"process peak RSS: {report['cpu_peak_rss_gib']:.2f} GiB (CPU: timings are ratios only; no peak)")
    for case in report["cases"]:
        lines += ["", f"### {case['size']}, {case['text_tokens']} text + {case['image_tokens']} image tokens, "
                      f"{case['useful_tflop']:.3f} TFLOP useful per step", ""]
        for c in case["checks"]:
            tol = f"<= {c['tolerance']:.0e}" if c["tolerance"] is not None else "(quantisation, informative)"
            lines.append(f"- velocities {c['impl']} vs {c['vs']}: max rel. error {c['max_rel_error']:.2e} {tol}"
                         f"{'' if c['ok'] else '  **MISMATCH**'}")
        lines += ["", "| impl | step (s) | x vs diffusers default | x vs diffusers tuned | x vs ComfyUI core "
                      "| x vs ours | TFLOP/s | % bf16 peak | executed TFLOP | weights GiB | peak GiB |", "|" + "---|" * 11]
        for r in case["results"]:
            sp = r["speedup_vs"]
            ratio = lambda k: f"{sp[k]:.3f}" if k in sp else "-"  # noqa: E731
            frac = f"{100 * r['peak_fraction']:.1f}" if r["peak_fraction"] else "n/a"
            peak = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "n/a"
            lines.append(f"| {r['impl']} | {r['median_s']:.4f} | {ratio('diffusers-default')} | {ratio('diffusers-tuned')}"
                         f" | {ratio('comfyui-core')} | {ratio('ours')} | {r['useful_tflops']:.4g} | {frac} | {r['executed_tflop']:.4g}"
                         f" | {r['weights_gib']:.3f} | {peak} |")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="CPU smoke: tiny model, 256x256, fp32")
    p.add_argument("--model", choices=sorted(MODELS), help="default: full (tiny with --tiny)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["bf16", "fp32"], help="default: bf16 on cuda, fp32 on cpu")
    p.add_argument("--size", action="append", help="WIDTHxHEIGHT, repeatable (default 1024x1024; 256x256 tiny)")
    p.add_argument("--layers", type=int, help="override the model's number of layers (e.g. the real width, 2 layers)")
    p.add_argument("--comfyui", type=Path, help="a ComfyUI tree (0.33+): also time core's native Ideogram 4 model")
    p.add_argument("--text-tokens", type=int, default=300)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--quant", action="append", choices=["fp8", "nf4"], default=[])
    p.add_argument("--compile", action="store_true", help="torch.compile our blocks (diffusers stays eager)")
    p.add_argument("--compile-diffusers", action="store_true", help="also compile diffusers' repeated blocks")
    p.add_argument("--no-diffusers", action="store_true", help="ours only (e.g. to measure NF4 memory alone)")
    p.add_argument("--no-diffusers-default", action="store_true",
                   help="diffusers tuned only (its 2048-row padded default is slow on CPU)")
    p.add_argument("--peak-tflops", type=float, help="override the bf16 peak of the device")
    p.add_argument("--check-tol", type=float, help="max relative velocity error vs ours (1e-4 fp32, 5e-2 bf16)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    args.model = args.model or ("tiny" if args.tiny else "full")
    args.size = args.size or (["256x256"] if args.tiny else ["1024x1024"])
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    cfg = MODELS[args.model]
    if args.layers:
        cfg = dataclasses.replace(cfg, num_layers=args.layers)
    comfy_version = import_comfyui(args.comfyui.resolve(), device) if args.comfyui else None
    device_name, args.peak = peak_tflops(device)
    args.peak = args.peak_tflops or args.peak

    with torch.inference_mode():
        ours = (random_transformer(cfg, device, dtype, seed=0), random_transformer(cfg, device, dtype, seed=1))
        pairs = {"ours": ours}
        for kind in args.quant:
            pairs[f"ours-{kind}"] = tuple(quantized_copy(m, kind) for m in ours)
        if args.compile:
            for name, pair in pairs.items():
                for m in pair:
                    m.compile_blocks()
        if not args.no_diffusers:
            twins = tuple(diffusers_twin(m) for m in ours)
            if args.compile_diffusers:
                for m in twins:
                    m.compile_repeated_blocks()
            if not args.no_diffusers_default:
                pairs["diffusers-default"] = twins
            pairs["diffusers-tuned"] = twins
        if args.comfyui:
            pairs["comfyui-core"] = tuple(comfy_core_twin(m) for m in ours)
        cases = []
        for size in args.size:
            width, height = (int(v) for v in size.lower().split("x"))
            cases.append(run_case(args, cfg, pairs, width, height, device, dtype))

    import diffusers

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB if device.type == "cpu" else None
    report = {"device": str(device), "device_name": device_name, "peak_bf16_tflops": args.peak,
              "dtype": str(dtype).removeprefix("torch."), "model": args.model, "config": cfg.to_dict(),
              "compile": "ours" + ("+diffusers" if args.compile_diffusers else "") if args.compile else "no",
              "repeats": args.repeats, "torch": torch.__version__, "diffusers": diffusers.__version__,
              "comfyui": comfy_version,
              "cpu_peak_rss_gib": rss, "cases": cases}
    print(markdown(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
