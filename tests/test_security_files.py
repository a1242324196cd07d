"""Issue 8, files: on a real ComfyUI server, model names arriving through POST /prompt resolve only
to files we listed ourselves, pickles are refused with the reason and never unpickled, and corrupt,
truncated or wrong-model files give clear errors, while the server keeps serving.

What refuses what (ComfyUI 0.3.75): V3 combo values (all our loaders' inputs) are NOT checked
against their list by ComfyUI, so our loaders' `validate_inputs` does it at queue time
(`custom_validation_failed`); ComfyUI itself refuses malformed links (`bad_linked_input`, unknown
node ids, type mismatches) and its own V1 combos (`VAELoader`: `value_not_in_list`). A JSON null
passes both (ComfyUI hands None to validate_inputs for linked inputs, so we let it through there)
and is refused by the loader when it runs: that is the path that reaches our node code.
"""

from __future__ import annotations

import pickle
import shutil

import pytest
import torch

from reliability_helpers import error_texts, latent_prompt, read_latent, refused, run_error
from server_models import COND_FILE, TEXT_ENCODER_FOLDER, VAE_FILE
from test_server_e2e import tiny_prompt


class _Payload:
    """Unpickling this creates a marker file: proof that a pickle would have run code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture(scope="module")
def server(tiny_server, tmp_path_factory):
    """The shared server, with hostile and broken files added to its model folders."""
    host, _ = tiny_server
    marker = tmp_path_factory.mktemp("pickles") / "PWNED"
    dit = host.models_dir / "diffusion_models"
    payload = _Payload(str(marker))
    for name in ("evil.ckpt", "evil.pt", "evil.pth", "evil.bin", "evil.pkl"):
        (dit / name).write_bytes(pickle.dumps(payload))
    torch.save({"w": payload}, dit / "evil_zip.safetensors")  # torch.save = a zip of pickles
    (dit / "evil_raw.safetensors").write_bytes(pickle.dumps([payload] * 3, protocol=4))
    (host.models_dir / "text_encoders" / "evil_te.pt").write_bytes(pickle.dumps(payload))

    cond = (dit / COND_FILE).read_bytes()
    (dit / "truncated.safetensors").write_bytes(cond[: len(cond) // 2])
    (dit / "garbage.safetensors").write_bytes(bytes(range(256)) * 64)
    (dit / "error_page.safetensors").write_bytes(b"<!DOCTYPE html><html><body>401 Unauthorized</body></html>")
    (dit / "lfs_pointer.safetensors").write_bytes(
        b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 9300000000\n")
    shutil.copyfile(host.models_dir / "vae" / VAE_FILE, dit / "a_vae.safetensors")  # wrong model
    shutil.copyfile(dit / COND_FILE, host.models_dir / "text_encoders" / "a_dit.safetensors")
    yield host, marker
    assert not marker.exists(), "a pickle was unpickled: it ran code"


def dit_prompt(**inputs) -> dict:
    prompt = latent_prompt(seed=1, prefix="security_files")
    prompt["1"]["inputs"].update(inputs)
    return prompt


def te_prompt(name) -> dict:
    prompt = latent_prompt(seed=1, prefix="security_files")
    prompt["2"]["inputs"]["text_encoder_name"] = name
    return prompt


def test_only_safetensors_are_offered(server):
    host, _ = server
    for node, inp in (("Ideogram4ModelLoader", "model_name"), ("Ideogram4TextEncoderLoader", "text_encoder_name")):
        options = host.object_info(node)["input"]["required"][inp][1]["options"]
        assert options and all(o.endswith(".safetensors") or o.endswith("/") for o in options), options


@pytest.mark.parametrize("name", ["evil.ckpt", "evil.pt", "evil.pth", "evil.bin", "evil.pkl"])
def test_pickle_names_are_refused_with_the_reason(server, name):
    host, marker = server
    text = error_texts(refused(host, dit_prompt(model_name=name)), "1")
    assert "custom_validation_failed" in text and "pickle" in text and "run code" in text, text
    assert ".safetensors" in text
    assert not marker.exists()


def test_pickle_text_encoder_name_is_refused(server):
    host, marker = server
    text = error_texts(refused(host, te_prompt("evil_te.pt")), "2")
    assert "pickle" in text and "run code" in text, text
    assert not marker.exists()


@pytest.mark.parametrize("name,expected", [
    ("evil_zip.safetensors", "zip archive, which is how torch.save writes pickled checkpoints"),
    ("evil_raw.safetensors", "Python pickle; pickles are never loaded"),
])
def test_pickle_disguised_as_safetensors_is_recognised_not_run(server, name, expected):
    host, marker = server
    error = run_error(host, dit_prompt(model_name=name))
    assert error["node_id"] == "1" and expected in error["exception_message"], error["exception_message"]
    assert not marker.exists()


BAD_NAMES = [
    # (value, what our message says)
    ("../vae/" + VAE_FILE, "without '..'"),
    ("../../custom_nodes/comfyui-ideogram4/pyproject.toml", "without '..'"),
    ("sub/../../" + COND_FILE, "without '..'"),
    ("/etc/passwd", "absolute path"),
    ("..\\" + COND_FILE, "without '..'"),
    ("nope.safetensors", "is not in ComfyUI's diffusion_models folder"),
    ("notes.txt", "is not in ComfyUI's diffusion_models folder"),
    ("", "no diffusion_models model selected"),
    (5, "must be a model name (text) picked from the list, got int 5"),
    (2.5, "got float 2.5"),
    (True, "got bool True"),
    ({"a": 1}, "got dict {'a': 1}"),
]


@pytest.mark.parametrize("value,expected", BAD_NAMES, ids=[repr(v)[:40] for v, _ in BAD_NAMES])
@pytest.mark.parametrize("input_name", ["model_name", "unconditional_model_name"])
def test_bad_model_names_are_refused_when_queued(server, value, expected, input_name):
    host, _ = server
    text = error_texts(refused(host, dit_prompt(**{input_name: value})), "1")
    assert "custom_validation_failed" in text and f"{input_name} - " in text and expected in text, text


def test_absolute_path_of_a_real_model_is_refused(server):
    host, _ = server
    real = str(host.models_dir / "diffusion_models" / COND_FILE)
    text = error_texts(refused(host, dit_prompt(model_name=real)), "1")
    assert "absolute path" in text, text


@pytest.mark.parametrize("value,expected", [
    ("../" + TEXT_ENCODER_FOLDER, ["custom_validation_failed", "refused model name", "without '..' or an absolute path"]),
    ("/" + TEXT_ENCODER_FOLDER + "/", ["custom_validation_failed", "refused model name", "absolute path"]),
    (7, ["custom_validation_failed", "must be a model name (text) picked from the list, got int 7"]),
    (["x"], ["bad_linked_input"]),  # a list is a link for ComfyUI, which refuses it itself
], ids=["dotdot", "absolute", "int", "list"])
def test_bad_text_encoder_names_are_refused_when_queued(server, value, expected):
    host, _ = server
    text = error_texts(refused(host, te_prompt(value)), "2")
    for fragment in expected:
        assert fragment in text, (fragment, text)


@pytest.mark.parametrize("value,kind", [
    (["x"], "bad_linked_input"),  # a list is a link for ComfyUI
    (["999", 0], "exception_during_inner_validation"),  # a link to a node that does not exist
    (["4", 0], "return_type_mismatch"),  # a LATENT output into a file-name input
])
def test_comfyui_refuses_malformed_links_itself(server, value, kind):
    host, _ = server
    errors = refused(host, dit_prompt(model_name=value))
    assert kind in error_texts(errors, "1") or any(kind in error_texts(errors, n) for n in errors), errors


def test_comfyui_checks_its_own_vae_list(server):
    host, _ = server
    prompt = tiny_prompt(1)
    prompt["6"]["inputs"]["vae_name"] = "../diffusion_models/" + COND_FILE
    assert "value_not_in_list" in error_texts(refused(host, prompt), "6")


def test_null_name_reaches_the_loader_and_is_refused_there(server):
    host, _ = server
    error = run_error(host, dit_prompt(model_name=None))
    assert error["node_id"] == "1" and "must be a model name (text)" in error["exception_message"], error


@pytest.mark.parametrize("name,expected", [
    ("truncated.safetensors", "truncated"),
    ("garbage.safetensors", "not a valid safetensors file"),
    ("error_page.safetensors", "error page"),
    ("lfs_pointer.safetensors", "Git LFS pointer"),
    ("a_vae.safetensors", "a Flux.2 VAE"),
])
def test_broken_and_wrong_model_files_give_clear_errors(server, name, expected):
    host, _ = server
    error = run_error(host, dit_prompt(model_name=name))
    assert error["node_id"] == "1" and expected in error["exception_message"], error["exception_message"]
    assert name in error["exception_message"]


def test_dit_file_as_text_encoder_is_named(server):
    host, _ = server
    error = run_error(host, te_prompt("a_dit.safetensors"))
    assert error["node_id"] == "2" and "diffusion transformer" in error["exception_message"], error


def test_server_keeps_serving_after_all_of_that(server):
    host, _ = server
    entry = host.run(latent_prompt(seed=101, prefix="security_files_after"), timeout=300)
    latent = read_latent(host, entry)
    assert latent.shape == (1, 128, 16, 16) and torch.isfinite(latent).all()
