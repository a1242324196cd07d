"""TEST-ONLY fault injection. Inert unless the environment variable IDEOGRAM4_TEST_FAULT is set.

The reliability tests start separate ComfyUI servers with this variable to prove that an
out-of-memory error at each stage gives an actionable message, releases memory and leaves the
server ready, and that a Cancel pressed while a stage is in flight stops it deterministically.
Nothing reads the variable but this module, and with it unset every function below returns at once
without doing anything. Never set it on a server people use.

    IDEOGRAM4_TEST_FAULT="oom_in_load,cpu_oom_in_encode,oom_in_step:3,oom_in_decode:2"
    IDEOGRAM4_TEST_FAULT="await_cancel_in_step:3,await_cancel_in_decode"

Comma-separated entries, each `<kind>_in_<stage>[:<n>]`. Stages and their fault points:
  load    Load Ideogram 4 Models, after the weights were read, before they are wrapped
  encode  Ideogram 4 Text Encode, after the encoder ran (encoder loaded, features allocated)
  step    Ideogram 4 Sampler, after each step's model calls, before its progress report (which is
          where Cancel is checked)
  decode  Ideogram 4 VAE Decode, inside the decoder, as its full-resolution level starts (the
          largest activations are alive)
Kinds:
  oom           raise `torch.OutOfMemoryError` once, the n-th time (1-based, default 1) this server
                process reaches the stage, counting across prompts; for `step`, n is the step number
                within a sampling run (so oom_in_step:3 is step 3 of the first run that has one)
  cpu_oom       the same, with the CPU allocator's own failure: a real allocation larger than any
                address space, which the allocator refuses with a plain RuntimeError
  await_cancel  every time the stage is reached (for `step`: at step n of every run), wait until
                Cancel has been pressed (ComfyUI's interrupt flag is set), so a test's Cancel lands
                while that stage is in flight however loaded the machine is; never spent
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from typing import NamedTuple

import torch

ENV = "IDEOGRAM4_TEST_FAULT"
STAGES = ("load", "encode", "step", "decode")
KINDS = ("oom", "cpu_oom", "await_cancel")
# A safety net so a test whose Cancel never comes fails on its own assertions instead of hanging.
AWAIT_CANCEL_GIVE_UP_S = 600.0


class Fault(NamedTuple):
    kind: str
    stage: str
    n: int | None  # None: every time (await_cancel) / the first time (oom, cpu_oom)


_lock = threading.Lock()
_armed: list[Fault] | None = None  # parsed on first use
_reached: dict[str, int] = {}  # stage -> how often its fault point was reached


def parse(spec: str) -> list[Fault]:
    """'oom_in_step:3,await_cancel_in_decode' -> [Fault('oom', 'step', 3), Fault('await_cancel',
    'decode', None)]; a bad entry is an error, so a typo in a test cannot silently test nothing."""
    armed = []
    for entry in filter(None, (e.strip() for e in spec.split(","))):
        name, _, number = entry.partition(":")
        kind, _, stage = name.partition("_in_")
        if kind not in KINDS or stage not in STAGES or (number and not number.isdigit()):
            raise ValueError(f"{ENV}: bad entry {entry!r}; expected <{'|'.join(KINDS)}>_in_<{'|'.join(STAGES)}>[:<n>]")
        armed.append(Fault(kind, stage, int(number) if number else None))
    return armed


def _faults() -> list[Fault]:
    global _armed
    if _armed is None:
        _armed = parse(os.environ.get(ENV, ""))
    return _armed


def armed(stage: str) -> bool:
    return any(f.stage == stage for f in _faults())


def fault_point(stage: str, step: int | None = None) -> None:
    """Act on the entries armed for `stage`; `step` is the 1-based step number within a sampling
    run (the `step` stage only)."""
    faults = _faults()
    if not any(f.stage == stage for f in faults):
        return
    with _lock:
        _reached[stage] = _reached.get(stage, 0) + 1
        count = step if step is not None else _reached[stage]
        # The log shows each point reached, so a test can tell which steps ran, reported or not.
        print(f"[{ENV}] reached {stage} {count}", file=sys.stderr, flush=True)
        due = [f for f in faults if f.stage == stage and
               (count == f.n if f.n is not None else f.kind == "await_cancel" or count == 1)]
        for f in due:
            if f.kind != "await_cancel":
                faults.remove(f)  # out-of-memory entries fire once, so the next prompt runs normally
    for f in due:
        if f.kind == "await_cancel":
            _await_cancel()
        elif f.kind == "oom":
            raise torch.OutOfMemoryError(f"[{ENV}] injected out-of-memory error in {stage} (test-only fault)")
        else:
            _cpu_allocator_failure()


def _await_cancel() -> None:
    import comfy.model_management  # only here: this module imports without ComfyUI

    give_up = time.monotonic() + AWAIT_CANCEL_GIVE_UP_S
    while not comfy.model_management.processing_interrupted() and time.monotonic() < give_up:
        time.sleep(0.01)


def _cpu_allocator_failure() -> None:
    """2**50 bytes exceed the 2**47-byte user address space of x86-64 and arm64 Linux, so this
    allocation always fails, without touching memory, with the allocator's real error."""
    torch.empty(2**50, dtype=torch.uint8)
    raise AssertionError("a 1 PiB CPU allocation succeeded")  # never reached on a real machine


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
