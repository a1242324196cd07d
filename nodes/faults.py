"""TEST-ONLY fault injection. Inert unless the environment variable IDEOGRAM4_TEST_FAULT is set.

The reliability tests start a separate ComfyUI server with this variable to prove that an
out-of-memory error at each stage gives an actionable message, releases memory and leaves the
server ready. Nothing reads the variable but this module, and with it unset every function below
returns at once without doing anything. Never set it on a server people use.

    IDEOGRAM4_TEST_FAULT="oom_in_load,oom_in_encode,oom_in_step:3,oom_in_decode:2"

Comma-separated entries, each `oom_in_<stage>[:<n>]`: raise `torch.OutOfMemoryError` the n-th time
(1-based, default 1) this server process reaches that stage's fault point, counting across prompts:
  load    Load Ideogram 4 Models, after the weights were read, before they are wrapped
  encode  Ideogram 4 Text Encode, after the encoder ran (encoder loaded, features allocated)
  step    Ideogram 4 Sampler, after each step's model calls (so oom_in_step:3 is step 3 of the
          first sampling run)
  decode  Ideogram 4 VAE Decode, inside the decoder, as its full-resolution level starts (the
          largest activations are alive)
Each entry fires once and is then spent, so the prompt after a faulted one runs normally.
"""

from __future__ import annotations

import contextlib
import os
import threading

import torch

ENV = "IDEOGRAM4_TEST_FAULT"
STAGES = ("load", "encode", "step", "decode")

_lock = threading.Lock()
_armed: dict[str, int] | None = None  # stage -> n, parsed on first use
_reached: dict[str, int] = {}  # stage -> how often its fault point was reached


def parse(spec: str) -> dict[str, int]:
    """'oom_in_step:3,oom_in_decode' -> {'step': 3, 'decode': 1}; a bad entry is an error, so a
    typo in a test cannot silently test nothing."""
    armed = {}
    for entry in filter(None, (e.strip() for e in spec.split(","))):
        name, _, number = entry.partition(":")
        stage = name.removeprefix("oom_in_")
        if not name.startswith("oom_in_") or stage not in STAGES or (number and not number.isdigit()):
            raise ValueError(f"{ENV}: bad entry {entry!r}; expected oom_in_<{'|'.join(STAGES)}>[:<n>]")
        armed[stage] = int(number or 1)
    return armed


def _faults() -> dict[str, int]:
    global _armed
    if _armed is None:
        _armed = parse(os.environ.get(ENV, ""))
    return _armed


def armed(stage: str) -> bool:
    return stage in _faults()


def fault_point(stage: str) -> None:
    """Raise the injected out-of-memory error when `stage` is armed and this is its n-th time."""
    faults = _faults()
    if stage not in faults:
        return
    with _lock:
        _reached[stage] = _reached.get(stage, 0) + 1
        if faults.get(stage) != _reached[stage]:
            return
        del faults[stage]
    raise torch.OutOfMemoryError(f"[{ENV}] injected out-of-memory error in {stage} (test-only fault)")


def fault_before(module: torch.nn.Module, stage: str):
    """A context in which `module`'s next forward call hits `fault_point(stage)`; nothing is
    registered on the module unless the stage is armed, and the hook is removed on exit."""
    if not armed(stage):
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def hooked():
        handle = module.register_forward_pre_hook(lambda *_: fault_point(stage))
        try:
            yield
        finally:
            handle.remove()

    return hooked()
