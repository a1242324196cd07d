"""Wrong, corrupt or foreign files given as the text encoder fail with a message that names the file,
says what it looks like and what was expected. Also: config.json forms seen in the wild."""

import json

import pytest
import torch
from safetensors.torch import save_file

from ideogram4_core.text.encoder import load_text_encoder
from ideogram4_core.files.text_encoder_files import TextEncoderFileError
from text_encoder_fixtures import tiny_qwen3vl, write_comfy_single_file, write_hf_folder


@pytest.fixture(scope="module")
def model():
    return tiny_qwen3vl(seed=1)


@pytest.fixture(scope="module")
def language_model_tensors(model):
    return {f"model.language_model.{k}": v.contiguous() for k, v in model.language_model.state_dict().items()}


def refused(path, *fragments):
    with pytest.raises(TextEncoderFileError) as error:
        load_text_encoder(path, dtype=torch.float32)
    message = str(error.value)
    for fragment in (str(path), *fragments):
        assert fragment in message, f"{fragment!r} not in: {message}"
    return message


def test_dit_file_given_as_text_encoder(tmp_path):
    path = tmp_path / "ideogram4_fp8_scaled.safetensors"
    save_file({"embed_image_indicator.weight": torch.zeros(4, 8), "layers.0.attention.qkv.weight": torch.zeros(24, 8)}, str(path))
    refused(path, "diffusion transformer", "expected a Qwen3-VL text encoder")


def test_vae_file_given_as_text_encoder(tmp_path):
    path = tmp_path / "flux2-vae.safetensors"
    save_file({"bn.running_mean": torch.zeros(128), "decoder.up.0.block.0.conv1.weight": torch.zeros(4, 4, 3, 3)}, str(path))
    refused(path, "VAE")


def test_text_only_llm_given_as_text_encoder(tmp_path):
    path = tmp_path / "qwen3_8b.safetensors"
    save_file({"model.layers.0.self_attn.q_proj.weight": torch.zeros(4, 4), "model.embed_tokens.weight": torch.zeros(8, 4)}, str(path))
    refused(path, "text-only language model", "Qwen3-VL")


def test_truncated_file(language_model_tensors, tmp_path):
    path = tmp_path / "qwen3vl_8b_bf16.safetensors"
    save_file(language_model_tensors, str(path))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    refused(path, "corrupt")


def test_garbage_file(tmp_path):
    path = tmp_path / "download.safetensors"
    path.write_bytes(b"<html>404 not found</html>")
    refused(path, "not a readable safetensors file")


@pytest.mark.parametrize("name", ["pytorch_model.bin", "qwen3vl.gguf", "model.ckpt"])
def test_non_safetensors_files_are_never_opened(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"\x80\x04not read")  # a pickle header: must not be unpickled
    refused(path, "only .safetensors")


def test_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    refused(tmp_path, "no .safetensors weights")


def test_wrong_layer_count(language_model_tensors, tmp_path):
    path = tmp_path / "qwen3vl_4b_like.safetensors"
    save_file({k: v for k, v in language_model_tensors.items() if ".layers.3" not in k}, str(path))
    # layers 3 and 30..35 removed: 29 layers remain
    refused(path, "29 layers", "36-layer")


def test_missing_tensor(language_model_tensors, tmp_path):
    path = tmp_path / "incomplete.safetensors"
    save_file({k: v for k, v in language_model_tensors.items() if "layers.7.mlp.up_proj" not in k}, str(path))
    refused(path, "missing tensor", "layers.7.mlp.up_proj.weight")


def test_unsupported_comfy_quant_format(model, tmp_path):
    path = tmp_path / "qwen3vl_8b_nvfp4.safetensors"
    write_comfy_single_file(model, path, "comfy_quant")
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    key = "model.language_model.layers.0.self_attn.q_proj.comfy_quant"
    tensors[key] = torch.tensor(list(b'{"format": "nvfp4"}'), dtype=torch.uint8)
    save_file(tensors, str(path))
    refused(path, "'nvfp4'", "float8")


def test_config_that_disagrees_with_the_weights(model, tmp_path):
    folder = write_hf_folder(model, tmp_path / "te")
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["hidden_size"] = 4096
    (folder / "config.json").write_text(json.dumps(config))
    refused(folder, "hidden_size=4096", "32")


def test_config_of_another_model_type(model, tmp_path):
    folder = write_hf_folder(model, tmp_path / "te")
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    refused(folder, "'llama'", "qwen3_vl")


def test_transformers_4_57_config_form_is_understood(model, tmp_path):
    """Qwen/Qwen3-VL-8B-Instruct's config.json (transformers 4.57) spells RoPE as rope_scaling +
    rope_theta and carries dtype/token fields; the result must equal the transformers-5 form."""
    folder = write_hf_folder(model, tmp_path / "te")
    expected = load_text_encoder(folder, dtype=torch.float32).encode("legacy config").features
    text = json.loads((folder / "config.json").read_text())["text_config"]
    legacy_text = {k: text[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                        "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps",
                                        "max_position_embeddings")}
    legacy_text.update(model_type="qwen3_vl_text", dtype="bfloat16", bos_token_id=151643, eos_token_id=151645,
                       hidden_act="silu", attention_bias=False, use_cache=True, rope_theta=5000000,
                       rope_scaling={"mrope_interleaved": True, "mrope_section": [2, 1, 1], "rope_type": "default"})
    legacy = {"architectures": ["Qwen3VLModel"], "model_type": "qwen3_vl", "text_config": legacy_text,
              "vision_config": {"depth": 1}, "transformers_version": "4.57.0.dev0", "ideogram_fp8_weight_only": False}
    (folder / "config.json").write_text(json.dumps(legacy))
    assert torch.equal(load_text_encoder(folder, dtype=torch.float32).encode("legacy config").features, expected)


def test_bad_quantize_option(model, tmp_path):
    with pytest.raises(ValueError, match="quantize must be one of"):
        load_text_encoder(write_hf_folder(model, tmp_path / "te"), quantize="int8")
