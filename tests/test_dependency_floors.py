"""The floors in requirements.txt are real: the pack's own tests pass with exactly those versions.

A fresh virtual environment gets the torch of this one plus every requirement pinned to its floor
(`>=X` becomes `==X`): transformers 4.57.0 (the first release with Qwen3-VL), so a ComfyUI
environment that still has 4.57 keeps it when the pack is installed. Then the tests of everything
that imports those packages (tokenizer, text encoder, caption schema, quantised layers) run there.
Tests that need diffusers skip in it: diffusers 0.42.1, the oracle, needs transformers 5; the same
tests run against it in the main environment.

transformers 4.57.0 is marked yanked on PyPI ("error in the setup"); pip installs it when pinned
exactly, and a user who has it keeps it. Costs: a venv with torch (on CI's machine the torch 2.13.0
file on disk, no download) plus ~10 small wheels, then ~3.5 min of tests on 2 busy cores
(12 min in all measured here with a load average of 15; docs/comfyui-host.md). It runs under CI or
with IDEOGRAM4_FLOORS=1 and skips otherwise.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
TESTS = ["tests/test_text_encoder_tokenizer.py", "tests/test_text_encoder_parity.py",
         "tests/test_text_encoder_errors.py", "tests/test_caption_schema.py", "tests/test_caption_verify.py",
         "tests/test_quant_layers.py"]
TEST_TOOLS = ["pytest>=8", "hypothesis>=6", "safetensors>=0.4", "packaging>=23",
              "comfyui-workflow-templates-json==0.1.123"]


def floors() -> list[str]:
    pins = []
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            (floor,) = [s.version for s in req.specifier if s.operator == ">="]
            pins.append(f"{req.name}=={floor}")
    return pins


@pytest.fixture(scope="module")
def floor_python():
    """The python of a fresh venv with this torch and every requirement at its floor."""
    if not any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("CI", "IDEOGRAM4_FLOORS")):
        pytest.skip("builds a second venv: runs under CI, or set IDEOGRAM4_FLOORS=1")
    work = Path(tempfile.mkdtemp(prefix="floors-"))
    try:
        subprocess.run([sys.executable, "-m", "venv", str(work / "venv")], check=True)
        python = str(work / "venv" / "bin" / "python")
        torch_pin = f"torch=={torch.__version__.split('+')[0]}"
        constraints = work / "torch.txt"
        constraints.write_text(torch_pin + "\n")
        subprocess.run([python, "-m", "pip", "install", "-q", torch_pin], check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", *floors(), *TEST_TOOLS, "-c", str(constraints)],
                       check=True)
        freeze = subprocess.run([python, "-m", "pip", "list", "--format=json"], capture_output=True,
                                text=True, check=True).stdout
        installed = {p["name"].lower().replace("_", "-"): Version(p["version"]) for p in json.loads(freeze)}
        for pin in floors():
            name, version = pin.split("==")
            assert installed.get(name.lower()) == Version(version), f"{pin}: got {installed.get(name.lower())}"
        print("floor environment:", ", ".join(floors()), "with", torch_pin)  # shown with -s
        yield python
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_pack_tests_pass_at_the_floors(floor_python):
    run = subprocess.run([floor_python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS], cwd=REPO,
                         capture_output=True, text=True)
    print(run.stdout[-1500:])
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]


ENCODE_IN_FLOOR_ENV = """
import sys, torch
from safetensors.torch import save_file
from ideogram4_core.text.encoder import load_text_encoder
captions = sys.argv[3:]
out = {f"{i}": load_text_encoder(sys.argv[1], dtype=torch.float32).encode(c).features for i, c in enumerate(captions)}
save_file(out, sys.argv[2])
"""


@pytest.mark.parametrize("layout", ["hf_folder", "comfy_single_file"])
def test_text_features_equal_on_transformers_4_57_and_5(floor_python, tmp_path, layout):
    """The diffusers-checked features (this environment, transformers 5) are exactly what the pack
    computes with transformers 4.57 from the same file: the oracle's verdict carries over."""
    from safetensors.torch import load_file
    from text_encoder_fixtures import tiny_qwen3vl, write_comfy_single_file, write_hf_folder

    from ideogram4_core.text.encoder import load_text_encoder

    model = tiny_qwen3vl()
    if layout == "hf_folder":
        path = write_hf_folder(model, tmp_path / "te")  # config.json in transformers 5's form
    else:
        path = tmp_path / "qwen3vl.safetensors"
        write_comfy_single_file(model, path, "bf16")
    captions = ['{"high_level_description": "a red fox"}', "plain words, then more words"]
    out = tmp_path / "floor_features.safetensors"
    subprocess.run([floor_python, "-c", ENCODE_IN_FLOOR_ENV, str(path), str(out), *captions], cwd=REPO, check=True)
    floor = load_file(out)
    for i, caption in enumerate(captions):
        here = load_text_encoder(path, dtype=torch.float32).encode(caption).features
        assert torch.equal(floor[str(i)], here), (caption, (floor[str(i)] - here).abs().max())
