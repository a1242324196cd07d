"""Time local caption generation (magic prompt) against transformers' own `generate`, on the SAME
random Qwen3-VL weights in one process, and measure what the schema constraint costs per token.

Four runs, interleaved and repeated (median), each decoding `--tokens` new tokens after the real
magic-prompt framing (system prompt + idea, ~650 tokens):
- transformers: `Qwen3VLForConditionalGeneration.generate`, greedy, unconstrained, KV cache,
  min_new_tokens = max_new_tokens (exactly N tokens);
- ours-unconstrained: `ideogram4_core.text.generate` through `GenerativeQwen3VL` (the encoder's
  language model and LM head shared by reference), greedy, no constraint;
- ours-constrained: the same with the caption grammar (llguidance), greedy; it stops when the
  caption is complete, so tokens/s is computed over the tokens it produced;
- ours-constrained-sampled: temperature 0.7, top-k 20, top-p 0.8 (the node's defaults).
Constraint overhead per token = the time spent computing masks, consuming tokens and finishing
(measured inside `generate`, `Generated.constraint_seconds`) divided by the tokens produced.

Greedy transformers and greedy ours-unconstrained must produce the same tokens (checked before the
timing; the run stops otherwise). Speed does not depend on weight values, so random weights do.

    python scripts/benchmark_prompting.py                       # CPU: tiny model, seconds
    python scripts/benchmark_prompting.py --model 8b --device cuda --dtype bfloat16 --tokens 256 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ideogram4_core.text.caption_grammar import CaptionShape, generation_schema  # noqa: E402
from ideogram4_core.text.constraint import CaptionConstraint  # noqa: E402
from ideogram4_core.text.generate import Sampling, generate  # noqa: E402
from ideogram4_core.text.generative import GenerativeQwen3VL  # noqa: E402
from ideogram4_core.text.magic_prompt import CaptionRequest, magic_prompt_ids  # noqa: E402
from ideogram4_core.text.tokenizer import bundled_tokenizer  # noqa: E402

ROPE = {"rope_type": "default", "rope_theta": 5e6, "mrope_section": [24, 20, 20], "mrope_interleaved": True}
MODELS = {
    # Qwen3-VL-8B's language model (spec §C.1).
    "8b": dict(vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
               num_attention_heads=32, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-6,
               max_position_embeddings=262144, rope_parameters=ROPE),
    # CPU smoke: the real depth and vocabulary, tiny width.
    "tiny": dict(vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=36,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6,
                 max_position_embeddings=262144, rope_parameters=dict(ROPE, mrope_section=[4, 2, 2])),
}
END_IDS = [151645, 151643]
PROMPT = 'a fox reading a newspaper on a park bench, the headline says "FOXES WIN"'


def build(model_name: str, device: torch.device, dtype: torch.dtype) -> Qwen3VLForConditionalGeneration:
    config = Qwen3VLConfig(text_config=MODELS[model_name], vision_config={"out_hidden_size": MODELS[model_name]["hidden_size"]},
                           tie_word_embeddings=False)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen3VLForConditionalGeneration(config).to(dtype)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.normal_(0.0, 1.0 if "embed" in name or "lm_head" in name else 0.02)
    return model.eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=list(MODELS), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--tokens", type=int, default=128, help="new tokens per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    tokenizer = bundled_tokenizer()
    full = build(args.model, device, dtype)
    ours = GenerativeQwen3VL(full.model.language_model, full.lm_head)
    ids = magic_prompt_ids(tokenizer, PROMPT, 1536, 1024, CaptionRequest())
    inputs = torch.tensor([ids], device=device)
    schema = generation_schema(CaptionShape())
    CaptionConstraint(tokenizer, full.config.text_config.vocab_size, schema)  # compile once, outside timing

    def run_transformers():
        with torch.no_grad():
            out = full.generate(input_ids=inputs, attention_mask=torch.ones_like(inputs), do_sample=False,
                                max_new_tokens=args.tokens, min_new_tokens=args.tokens, eos_token_id=END_IDS,
                                pad_token_id=END_IDS[1])
        return out[0, len(ids):].tolist(), 0.0

    def run_ours(constrained: bool, temperature: float):
        constraint = CaptionConstraint(tokenizer, full.config.text_config.vocab_size, schema) if constrained else None
        result = generate(ours, tokenizer, [ids], [constraint], [0],
                          Sampling(temperature=temperature, max_tokens=args.tokens), device=device)[0]
        return result.token_ids, result.constraint_seconds

    runs = {
        "transformers": run_transformers,
        "ours-unconstrained": lambda: run_ours(False, 0.0),
        "ours-constrained": lambda: run_ours(True, 0.0),
        "ours-constrained-sampled": lambda: run_ours(True, 0.7),
    }
    reference, _ = run_transformers()
    mine, _ = run_ours(False, 0.0)
    if mine != reference[: len(mine)] or len(mine) < min(len(reference), args.tokens):
        sys.exit(f"ours and transformers disagree on greedy tokens: {mine[:12]} vs {reference[:12]}")
    times = {name: [] for name in runs}
    produced, constraint_time = {}, {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            sync(device)
            start = time.perf_counter()
            tokens, constraint_seconds = run()
            sync(device)
            times[name].append(time.perf_counter() - start)
            produced[name] = len(tokens)
            constraint_time[name].append(constraint_seconds)
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
              "model": args.model, "dtype": args.dtype, "prompt_tokens": len(ids), "torch_threads": torch.get_num_threads(),
              "runs": {}}
    base = statistics.median(times["transformers"]) / produced["transformers"]
    print(f"{report['device']}, {args.model}, {args.dtype}, prompt {len(ids)} tokens, median of {args.repeats}")
    print("| run | tokens | seconds | tokens/s | vs transformers (per token) | constraint ms/token |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in runs:
        seconds = statistics.median(times[name])
        per_token = seconds / produced[name]
        overhead = 1000 * statistics.median(constraint_time[name]) / produced[name]
        report["runs"][name] = {"tokens": produced[name], "seconds": seconds, "tokens_per_second": 1 / per_token,
                                "time_per_token_vs_transformers": per_token / base, "constraint_ms_per_token": overhead}
        print(f"| {name} | {produced[name]} | {seconds:.3f} | {1 / per_token:.1f} | {per_token / base:.2f}x | "
              f"{overhead:.3f} |")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
