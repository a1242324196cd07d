"""Force one of bitsandbytes 0.50.2's two NF4 CPU paths (explained in ideogram4_core/model/quant.py).

The switch is the feature check `Linear4bit.__init__` consults, `bitsandbytes.nn.modules.has_avx512bf16`
(imported there from `bitsandbytes.functional`); it stores the answer in the layer's
`support_avx512bf16_for_cpu`, which decides whether the layer's first CPU forward repacks it. So:
- "plain": layers built while the check answers False never repack: what a CPU without AVX512-BF16
  does. Works on any machine.
- "packed": layers built while it answers True repack on their first CPU forward (unless
  `keep_cpu_path_valid` turned that off for the layer). The fused kernel behind it is registered by
  bitsandbytes only when the CPU has AVX512-BF16 (`bitsandbytes/backends/cpu/ops.py`) and executes
  those instructions, so this can only be forced on such a CPU; elsewhere those cases skip. The
  repack itself is plain torch and is tested on every machine (tests/test_nf4_cpu_paths.py).

Whole suite: `IDEOGRAM4_TEST_BNB_CPU_PATH=plain|packed python -m pytest` (conftest.py applies it).
One test: the `bnb_cpu_path` fixture (both paths) or `force(monkeypatch, path)`.
"""

from __future__ import annotations

import functools

PATHS = ("plain", "packed")
ENV_VAR = "IDEOGRAM4_TEST_BNB_CPU_PATH"
NO_PACKED_KERNEL = "this CPU lacks AVX512-BF16, so bitsandbytes has no packed NF4 kernel to run"


@functools.cache
def cpu_has_packed_kernel() -> bool:
    """What bitsandbytes itself asked when it registered its CPU kernels."""
    from bitsandbytes.functional import has_avx512bf16

    return bool(has_avx512bf16())


def feature_check(path: str):
    """The replacement for bitsandbytes' feature check that selects `path`."""
    if path not in PATHS:
        raise ValueError(f"bitsandbytes CPU path must be one of {PATHS}, got {path!r}")
    if path == "packed" and not cpu_has_packed_kernel():
        raise RuntimeError(NO_PACKED_KERNEL)
    answer = path == "packed"
    return lambda: answer


def force(monkeypatch, path: str) -> None:
    """Layers built from now until the test ends take `path` (monkeypatch undoes it)."""
    import bitsandbytes.nn.modules

    monkeypatch.setattr(bitsandbytes.nn.modules, "has_avx512bf16", feature_check(path))


def force_for_session(path: str) -> None:
    import bitsandbytes.nn.modules

    bitsandbytes.nn.modules.has_avx512bf16 = feature_check(path)


def took_packed_path(layer) -> bool:
    """True once a Linear4bit's weight has been repacked by a packed-path forward."""
    return bool(getattr(layer.weight.quant_state, "packing_format_for_cpu", False))
