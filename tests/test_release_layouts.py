"""The test writers produce exactly the published layouts recorded in release_layouts.py (names,
dtypes, shapes, JSON fields, header metadata), read back from the written safetensors headers, and
our model has exactly the Linear layers the releases quantise. A misreading of a format that the
loader and the writers shared would otherwise pass every layout test unseen."""

from __future__ import annotations

import json
import struct

import pytest
import torch

import release_layouts as facts
from _checkpoint_factory import comfy_fp8_state, nf4_state, official_fp8_state, reference_model, save
from ideogram4_core.files.checkpoint import inspect_checkpoint
from ideogram4_core.model.transformer import Ideogram4Config, Ideogram4Transformer


def read_header(path) -> tuple[dict, dict | None]:
    """{name: (dtype, shape)} and __metadata__ straight from the safetensors header bytes."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    metadata = header.pop("__metadata__", None)
    return {k: (v["dtype"], v["shape"]) for k, v in header.items()}, metadata


def stored_json(path, key: str) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return json.loads(bytes(f.get_tensor(key).tolist()).decode())


def test_the_released_model_has_exactly_the_published_linears():
    with torch.device("meta"):
        model = Ideogram4Transformer(Ideogram4Config())
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert model.config.num_layers == facts.NUM_LAYERS
    assert sorted(linears) == sorted(facts.quantised_linears()) and len(linears) == facts.NUM_QUANTISED_LINEARS


@pytest.fixture(scope="module")
def model():
    return reference_model(seed=0)


def variants(path) -> set[str]:
    """How our detector reads the file's linears."""
    return {part.variant or part.kind for parts in inspect_checkpoint(path).linears.values() for part in parts}


def check_layout(path, model, layout: dict, prefix: str = "") -> dict:
    header, metadata = read_header(path)
    assert metadata == layout["metadata"]
    linears = facts.quantised_linears(model.config.num_layers)
    expected = {}
    for name in linears:
        out, inp = model.get_submodule(name).weight.shape
        for suffix, (dtype, shape) in layout["linear"].items():
            expected[prefix + name + suffix] = (dtype, None if shape is None else shape(out, inp))
    state = model.state_dict()
    for key, value in state.items():
        module = key.rsplit(".", 1)[0]
        if module in linears and key.endswith(".weight"):
            continue
        dtype = layout["bias"] if module in linears else layout["other"]
        expected[prefix + key] = (dtype, list(value.shape))
    got = {k: (d, None if expected.get(k, ("", 0))[1] is None else s) for k, (d, s) in header.items()}
    assert set(got) == set(expected), (sorted(set(got) - set(expected))[:5], sorted(set(expected) - set(got))[:5])
    wrong = {k: (got[k], expected[k]) for k in expected if got[k] != expected[k]}
    assert not wrong, list(wrong.items())[:5]
    return header


def test_official_fp8_writer_is_the_published_layout(tmp_path, model):
    path = save(tmp_path / "diffusion_pytorch_model.safetensors", official_fp8_state(model))
    check_layout(path, model, facts.OFFICIAL_FP8)
    assert variants(path) == {"official"}


def test_official_nf4_writer_is_the_published_layout(tmp_path, model):
    path = save(tmp_path / "diffusion_pytorch_model.safetensors", nf4_state(model))
    layout = dict(facts.OFFICIAL_NF4)
    layout["linear"] = dict(layout["linear"])
    layout["linear"][".weight.absmax"] = ("F32", lambda out, inp: [-(-out * inp // 64)])  # a partial last block
    check_layout(path, model, layout)
    for name in facts.quantised_linears(model.config.num_layers):
        out, inp = model.get_submodule(name).weight.shape
        fields = stored_json(path, name + ".weight.quant_state.bitsandbytes__nf4")
        want = dict(facts.OFFICIAL_NF4["quant_state_json"], shape=[out, inp])
        assert fields == want, (name, fields)
    assert variants(path) == {"bitsandbytes"}


def test_comfy_fp8_scaled_writer_is_the_published_layout(tmp_path, model):
    state, metadata = comfy_fp8_state(model, "comfy_quant", unit_scale=True, prefix="")
    path = save(tmp_path / "ideogram4_fp8_scaled.safetensors", state, metadata)
    check_layout(path, model, facts.COMFY_FP8_SCALED)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        for name in facts.quantised_linears(model.config.num_layers):
            assert stored_json(path, name + ".comfy_quant") == facts.COMFY_FP8_SCALED["comfy_quant_json"]
            assert f.get_tensor(name + ".weight_scale").item() == 1.0  # scales_all_one
    assert variants(path) == {"comfy_quant"}
