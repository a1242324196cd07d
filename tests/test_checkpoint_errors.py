"""Every way a DiT file can be wrong gives an error that names the file, says what it is and what
was expected. Foreign files carry the real key patterns of those models."""

from __future__ import annotations

import json
import pickle
import struct
import tracemalloc
from pathlib import Path

import pytest
import torch

from _checkpoint_factory import TINY, comfy_fp8_state, nf4_state, plain_state, reference_model, save, write_sharded
from ideogram4_core.files.checkpoint import inspect_checkpoint, load_transformer, load_transformer_pair
from ideogram4_core.files.errors import (
    CheckpointError,
    CheckpointMismatchError,
    CorruptCheckpointError,
    NotIdeogram4Error,
    NotSafetensorsError,
    UnsupportedQuantizationError,
)
from ideogram4_core.model.transformer import Ideogram4Config
from ideogram4_core.files.safetensors_io import MAX_HEADER_BYTES, read_header

T = torch.zeros(4, 4, dtype=torch.bfloat16)
FOREIGN = {
    "flux": (
        ["model.diffusion_model.double_blocks.0.img_attn.qkv.weight", "model.diffusion_model.single_blocks.0.linear1.weight",
         "model.diffusion_model.img_in.weight", "model.diffusion_model.time_in.in_layer.weight"],
        "a Flux diffusion model",
    ),
    "sd15": (
        ["model.diffusion_model.input_blocks.0.0.weight", "first_stage_model.decoder.up.0.block.0.conv1.weight",
         "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight"],
        "a Stable Diffusion (SD1.x / SD2 / SDXL) UNet checkpoint",
    ),
    "qwen3vl_text_encoder": (
        ["model.language_model.layers.0.self_attn.q_proj.weight", "model.language_model.embed_tokens.weight",
         "model.visual.blocks.0.attn.qkv.weight", "lm_head.weight"],
        "a Qwen3-VL text encoder",
    ),
    "flux2_vae": (
        ["encoder.down.0.block.0.conv1.weight", "decoder.up.0.block.0.conv1.weight", "bn.running_mean", "bn.running_var"],
        "a Flux.2 VAE",
    ),
    "ideogram_lora": (
        ["diffusion_model.layers.0.attention.qkv.lora_A.weight", "diffusion_model.layers.0.attention.qkv.lora_B.weight"],
        "a LoRA",
    ),
}


@pytest.mark.parametrize("kind", sorted(FOREIGN))
def test_foreign_model_is_named(tmp_path, kind):
    keys, looks_like = FOREIGN[kind]
    path = save(tmp_path / f"{kind}.safetensors", {k: T.clone() for k in keys})
    with pytest.raises(NotIdeogram4Error) as e:
        load_transformer(path)
    message = str(e.value)
    assert str(path) in message and looks_like in message
    assert "Expected an Ideogram 4 transformer" in message and "embed_image_indicator.weight" in message
    assert e.value.path == path


@pytest.fixture(scope="module")
def good_file(tmp_path_factory):
    return save(tmp_path_factory.mktemp("good") / "dit.safetensors", plain_state(reference_model(), torch.bfloat16))


def test_truncated_file(tmp_path, good_file):
    data = good_file.read_bytes()
    path = tmp_path / "dit.safetensors"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptCheckpointError, match="truncated") as e:
        load_transformer(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize(
    "content,expected",
    [
        (b"", "not a safetensors file"),
        (b"<!DOCTYPE html><html><body>Access to model is restricted</body></html>", "error page"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 9300000000\n", "Git LFS pointer"),
        (struct.pack("<Q", 10) + b"{not json}", "not valid JSON"),
        (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
        (struct.pack("<Q", 1 << 62) + b"{}", "header length"),
    ],
)
def test_corrupt_file_says_so(tmp_path, content, expected):
    path = tmp_path / "dit.safetensors"
    path.write_bytes(content)
    with pytest.raises(CorruptCheckpointError, match=expected) as e:
        inspect_checkpoint(path)
    assert str(path) in str(e.value)


def _raw_file(path: Path, header: dict, data: bytes = b"") -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


@pytest.mark.parametrize(
    "entry,data,expected",
    [
        ({"dtype": "F32", "shape": [1 << 40, 1 << 40], "data_offsets": [0, 16]}, b"\0" * 16, "needs"),
        ({"dtype": "F32", "shape": [2], "data_offsets": [0, 1 << 50]}, b"\0" * 8, "needs"),
        ({"dtype": "F32", "shape": [1 << 30], "data_offsets": [0, 1 << 32]}, b"\0" * 8, "truncated"),
        ({"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}, b"\0" * 4, "invalid shape"),
        ({"dtype": "X9", "shape": [1], "data_offsets": [0, 4]}, b"\0" * 4, "unknown dtype"),
        ({"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}, b"\0" * 8, "gap"),
    ],
)
def test_malicious_header_is_refused_before_allocating(tmp_path, entry, data, expected):
    path = _raw_file(tmp_path / "evil.safetensors", {"t": entry}, data)
    tracemalloc.start()
    try:
        with pytest.raises(CorruptCheckpointError, match=expected):
            read_header(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # a terabyte-sized claim costs well under 1 MiB


def test_too_many_tensors_are_refused_before_parsing(tmp_path):
    entry = '"t%d":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}'
    raw = ("{" + ",".join(entry % i for i in range(100_001)) + "}").encode()
    assert len(raw) < MAX_HEADER_BYTES
    path = tmp_path / "many.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    with pytest.raises(CorruptCheckpointError, match="more than 100000 tensors"):
        read_header(path)


def test_overlapping_tensors(tmp_path):
    header = {"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}, "b": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]}}
    with pytest.raises(CorruptCheckpointError, match="overlaps"):
        read_header(_raw_file(tmp_path / "x.safetensors", header, b"\0" * 6))


def test_deeply_nested_json(tmp_path):
    raw = b"[" * 100_000 + b"]" * 100_000
    path = tmp_path / "deep.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    with pytest.raises(CorruptCheckpointError, match="not valid JSON"):
        read_header(path)


class _Payload:
    """Unpickling this creates a marker file: proof that a pickle would have run code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".bin", ".pth"])
def test_pickles_are_refused_unread(tmp_path, suffix):
    marker = tmp_path / "code_ran"
    path = tmp_path / f"model{suffix}"
    path.write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(NotSafetensorsError, match="pickle") as e:
        load_transformer(path)
    assert str(path) in str(e.value) and "arbitrary code" in str(e.value)
    assert not marker.exists()


def test_pickle_renamed_to_safetensors_is_recognised(tmp_path):
    marker = tmp_path / "code_ran"
    renamed = tmp_path / "model.safetensors"
    torch.save({"w": _Payload(str(marker))}, renamed)  # torch.save writes a zip of pickles
    with pytest.raises(CorruptCheckpointError, match="zip archive"):
        load_transformer(renamed)
    plain = tmp_path / "plain.safetensors"
    plain.write_bytes(pickle.dumps([_Payload(str(marker))] * 3, protocol=4))
    with pytest.raises(CorruptCheckpointError, match="Python pickle"):
        load_transformer(plain)
    assert not marker.exists()


def test_folder_of_pickles(tmp_path):
    (tmp_path / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04.")
    with pytest.raises(NotSafetensorsError, match="only pickle files"):
        load_transformer(tmp_path)


def test_shape_mismatch_lists_each_problem(tmp_path):
    state = plain_state(reference_model())
    state["layers.1.attention.o.weight"] = torch.zeros(256, 128)
    state["layers.0.feed_forward.w2.weight"] = torch.zeros(256, 64)
    del state["layers.1.ffn_norm2.weight"]
    state["layers.0.attention.extra.weight"] = torch.zeros(3)
    path = save(tmp_path / "dit.safetensors", state)
    with pytest.raises(CheckpointMismatchError) as e:
        load_transformer(path)
    message = str(e.value)
    assert str(path) in message and "2 layers, hidden 256" in message
    assert "'layers.1.attention.o.weight' has shape [256, 128], expected [256, 256]" in message
    assert "'layers.0.feed_forward.w2.weight' has shape [256, 64], expected [256, 128]" in message
    assert "missing tensor 'layers.1.ffn_norm2.weight' [256]" in message
    assert "unexpected tensor 'layers.0.attention.extra.weight' [3]" in message
    assert len(e.value.mismatches) == 4


def test_missing_layer_is_reported(tmp_path):
    state = plain_state(reference_model(config=Ideogram4Config(**{**TINY.to_dict(), "num_layers": 3})))
    path = save(tmp_path / "dit.safetensors", {k: v for k, v in state.items() if not k.startswith("layers.1.")})
    with pytest.raises(CheckpointMismatchError, match=r"layers \[1\] are missing"):
        load_transformer(path)


def test_layer_count_against_expected_config(tmp_path):
    path = save(tmp_path / "dit.safetensors", plain_state(reference_model()))
    expected = Ideogram4Config(**{**TINY.to_dict(), "num_layers": 34})
    with pytest.raises(CheckpointMismatchError, match="num_layers: file has 2, expected 34"):
        load_transformer(path, expected_config=expected)


def test_pair_of_different_sizes(tmp_path):
    cond = save(tmp_path / "cond.safetensors", plain_state(reference_model()))
    bigger = reference_model(config=Ideogram4Config(**{**TINY.to_dict(), "num_layers": 3}))
    uncond = save(tmp_path / "uncond.safetensors", plain_state(bigger))
    with pytest.raises(CheckpointMismatchError, match="num_layers: conditional 2, unconditional 3"):
        load_transformer_pair(cond, uncond)


def test_unsupported_comfy_format(tmp_path):
    state, _ = comfy_fp8_state(reference_model(), "comfy_quant")
    key = "model.diffusion_model.layers.0.feed_forward.w1.comfy_quant"
    state[key] = torch.tensor(list(json.dumps({"format": "nvfp4"}).encode()), dtype=torch.uint8)
    with pytest.raises(UnsupportedQuantizationError, match="'nvfp4'"):
        load_transformer(save(tmp_path / "dit.safetensors", state))


def test_tampered_nf4_state(tmp_path):
    state = nf4_state(reference_model())
    key = "layers.0.attention.o.weight.quant_state.bitsandbytes__nf4"
    blob = json.loads(bytes(state[key].tolist()))
    blob["blocksize"], blob["dtype"] = 128, "load"
    state[key] = torch.tensor(list(json.dumps(blob).encode()), dtype=torch.uint8)
    with pytest.raises(CorruptCheckpointError, match="blocksize 128, but absmax implies 64; dtype 'load'"):
        load_transformer(save(tmp_path / "dit.safetensors", state))


def test_quantised_file_is_not_requantised(tmp_path):
    path = save(tmp_path / "dit.safetensors", nf4_state(reference_model()))
    with pytest.raises(CheckpointError, match="already quantised"):
        load_transformer(path, quantization="fp8")


def test_file_replaced_after_inspection(tmp_path, good_file):
    path = tmp_path / "dit.safetensors"
    path.write_bytes(good_file.read_bytes())
    info = inspect_checkpoint(path)
    save(path, plain_state(reference_model(seed=5), torch.float32))
    with pytest.raises(CorruptCheckpointError, match="changed on disk"):
        load_transformer(info)


def test_shard_index_cannot_point_outside_its_folder(tmp_path):
    index = write_sharded(tmp_path / "t", plain_state(reference_model()), shards=2)
    data = json.loads(index.read_text())
    first = next(iter(data["weight_map"]))
    data["weight_map"][first] = "../outside.safetensors"
    index.write_text(json.dumps(data))
    with pytest.raises(CorruptCheckpointError, match="not a plain file name"):
        inspect_checkpoint(tmp_path / "t")
    data["weight_map"][first] = "missing-shard.safetensors"
    index.write_text(json.dumps(data))
    with pytest.raises(CorruptCheckpointError, match="missing"):
        inspect_checkpoint(tmp_path / "t")


def test_pipeline_folder_without_uncond(tmp_path, good_file):
    (tmp_path / "transformer").mkdir()
    (tmp_path / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(good_file.read_bytes())
    with pytest.raises(CheckpointError, match="no 'unconditional_transformer/' subfolder"):
        load_transformer_pair(tmp_path)
