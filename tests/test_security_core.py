"""Issue 8, core file rules not covered elsewhere: a text-encoder shard index cannot send the loader
outside its folder or to a non-safetensors file. (Header size, tensor count, shape and offset checks
before allocation are in tests/test_checkpoint_errors.py: `test_malicious_header_is_refused_before_
allocating`, `test_too_many_tensors_are_refused_before_parsing`, `test_corrupt_file_says_so`, ...;
the DiT shard index in `test_shard_index_cannot_point_outside_its_folder`.)"""

import json

import pytest
import torch
from safetensors.torch import save_file

from ideogram4_core.files.text_encoder_files import TextEncoderFileError, open_text_encoder_checkpoint


@pytest.fixture
def folders(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    save_file({"model.language_model.embed_tokens.weight": torch.zeros(4, 2)}, str(outside / "secret.safetensors"))
    (outside / "evil.bin").write_bytes(b"\x80\x04K\x01.")
    folder = tmp_path / "models" / "text_encoders" / "qwen"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    save_file({"model.language_model.norm.weight": torch.zeros(2)}, str(folder / "model-1.safetensors"))
    (folder / "link.safetensors").symlink_to(outside / "secret.safetensors")
    return folder, outside


def write_index(folder, shard):
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"model.language_model.norm.weight": "model-1.safetensors", "x": shard}}))


@pytest.mark.parametrize("shard,why", [
    ("../../../elsewhere/secret.safetensors", "outside its folder"),
    ("ABSOLUTE", "outside its folder"),
    ("..\\secret.safetensors", "outside its folder"),
    ("../../../elsewhere/evil.bin", "outside its folder"),
    ("model-2.bin", "not a .safetensors file"),
    ("link.safetensors", "links outside its folder"),
    (["model-1.safetensors"], "outside its folder"),
])
def test_text_encoder_index_cannot_point_outside_its_folder(folders, shard, why):
    folder, outside = folders
    if shard == "ABSOLUTE":
        shard = str(outside / "secret.safetensors")
    write_index(folder, shard)
    with pytest.raises(TextEncoderFileError, match=why):
        open_text_encoder_checkpoint(folder)
