"""Streamed loading keeps peak host memory within 1.3x the file plus a fixed 64 MiB.

A 236 MiB synthetic bf16 file is loaded in a fresh subprocess, as stored and quantised to FP8.
Peak = the process's resident high-water mark (VmHWM, reset through /proc/self/clear_refs) after
loading minus its resident size just before (after imports), so it counts everything the load
allocated, transients included. Not ru_maxrss: Linux carries the parent's high-water mark over
into a spawned child (pytest's own few hundred MB here).

Measured: as stored, 309 MiB = the model's 236 MiB + 73 MiB that torch allocates once, the first
time any model is built on the meta device (measured alone); to FP8, 243 MiB for a 121 MiB model.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _checkpoint_factory import save
from ideogram4_core.model.transformer import Ideogram4Config, Ideogram4Transformer

MEDIUM = Ideogram4Config(
    in_channels=128, num_layers=7, num_heads=4, head_dim=256, intermediate_size=4096, adaln_dim=64, llm_features_dim=2048
)
FIXED_OVERHEAD = 64 * 2**20

MEASURE = r"""
import json, sys, torch
from ideogram4_core.files.checkpoint import load_transformer
def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))
try:  # reset the high-water mark so it starts at the current resident size
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
except OSError:
    pass
before = status("VmRSS")
model = load_transformer(sys.argv[1], quantization=sys.argv[2], compute_dtype=torch.bfloat16)
peak = status("VmHWM")
held = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
print(json.dumps({"peak_delta": peak - before, "model_bytes": held}))
"""


def _random_file(path: Path, dtype: torch.dtype) -> Path:
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in Ideogram4Transformer(MEDIUM).state_dict().items()}
    g = torch.Generator().manual_seed(0)
    return save(path, {k: (torch.randn(s, generator=g) * 0.02).to(dtype) for k, s in shapes.items()})


def _measure(path: Path, quantization: str) -> dict:
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path), quantization],
        cwd=root, capture_output=True, text=True, timeout=300, check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def bf16_file(tmp_path_factory):
    return _random_file(tmp_path_factory.mktemp("memory") / "medium.safetensors", torch.bfloat16)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux /proc memory counters")
@pytest.mark.parametrize("quantization", ["as_stored", "fp8"])
def test_streamed_peak_memory(bf16_file, quantization):
    size = bf16_file.stat().st_size
    m = _measure(bf16_file, quantization)
    print(f"\nbf16 file {size / 2**20:.0f} MiB -> {quantization}: peak {m['peak_delta'] / 2**20:.0f} MiB "
          f"({m['peak_delta'] / size:.2f}x file), model holds {m['model_bytes'] / 2**20:.0f} MiB")
    assert m["peak_delta"] <= 1.3 * size + FIXED_OVERHEAD
