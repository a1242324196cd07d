"""Every text-encoder layout encodes like diffusers' Ideogram4Pipeline.encode_prompt.

Tolerance: 1e-5 absolute in float32 for every layout. For quantised layouts the reference is run
on exactly the weights the quantised file represents (dequantised in float32), so quantisation
error is not part of the comparison; what remains is floating-point reordering between two runs
of the same transformers layers on other hardware or BLAS builds (observed here: exactly 0, bitwise, for
every layout, on features up to ~20 in magnitude).
The quantisation error itself (file vs original float weights) is a property of the file, not of
this loader, and is not asserted for files. For quantise-on-load it is this loader's doing, so
`test_quantise_on_load` also compares with the float weights (bounds stated there).
"""

import pytest
import torch
from transformers import AutoTokenizer

from ideogram4_core.text.encoder import load_text_encoder
from text_encoder_fixtures import (
    reference_features,
    reference_tokenizer_folder,
    tiny_qwen3vl,
    with_language_model_weights,
    write_comfy_single_file,
    write_hf_folder,
    write_nf4_folder,
    write_official_fp8_folder,
)

TOLERANCE = 1e-5
# Two captions of different lengths: the batch is left-padded, and one of them is non-ASCII.
CAPTIONS = ["a red fox in the snow, text 'OPEN 24/7' on a sign", "\n海报：“欢迎” 😀"]


@pytest.fixture(scope="module")
def model():
    return tiny_qwen3vl(seed=0)


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory):
    return reference_tokenizer_folder(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="module")
def tokenizer(tokenizer_folder):
    return AutoTokenizer.from_pretrained(tokenizer_folder)


@pytest.fixture(scope="module")
def reference(model, tokenizer):
    return reference_features(model, tokenizer, CAPTIONS)[0]


def assert_matches(encoder, expected: torch.Tensor) -> float:
    out = encoder.encode(CAPTIONS)
    assert out.features.dtype == torch.float32
    assert out.features.shape == expected.shape == (2, out.attention_mask.shape[1], 32 * 13)
    assert torch.isfinite(out.features).all()
    # Left padding: the shorter caption's first rows are padding and exactly zero.
    short = min(range(2), key=lambda b: out.token_counts[b])
    pad = out.features.shape[1] - out.token_counts[short]
    assert pad > 0 and out.features[short, :pad].eq(0).all()
    diff = (out.features - expected).abs().max().item()
    print(f"\n{encoder.description}: max |features - diffusers| = {diff:.3g}")  # shown with pytest -s
    assert diff <= TOLERANCE, f"max |diff| {diff:.3g} > {TOLERANCE}"
    return diff


def test_hf_folder_language_model_naming(model, reference, tokenizer_folder, tmp_path):
    folder = write_hf_folder(model, tmp_path / "text_encoder")
    (tmp_path / "tokenizer").symlink_to(tokenizer_folder, target_is_directory=True)  # diffusers layout
    encoder = load_text_encoder(tmp_path, dtype=torch.float32)  # pipeline root: finds text_encoder/
    assert encoder.tokenizer.source == str(folder.parent / "tokenizer")
    assert_matches(encoder, reference)


def test_hf_folder_sharded_conditional_generation_naming(model, reference, tmp_path):
    folder = write_hf_folder(model, tmp_path / "qwen3vl", conditional_generation=True)
    assert (folder / "model.safetensors.index.json").is_file()
    assert_matches(load_text_encoder(folder, dtype=torch.float32), reference)


def test_tapped_features_are_pre_final_norm_and_interleaved(model, reference, tokenizer):
    """Independent of diffusers: feature[c*13 + k] is hidden_states[layer_k + 1][c] from transformers'
    own forward; the last tap is the raw layer-35 output, which differs from the normed last state."""
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": CAPTIONS[0]}]}], add_generation_prompt=True, tokenize=False
    )
    ids = torch.tensor([tokenizer(ids, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        states = model.language_model(input_ids=ids, output_hidden_states=True).hidden_states
    n = ids.shape[1]
    features = reference[0, -n:].reshape(n, 32, 13)
    for slot, layer in enumerate((0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 33)):
        assert torch.allclose(features[:, :, slot], states[layer + 1][0], atol=1e-5)
    assert not torch.allclose(features[:, :, 12], states[36][0], atol=1e-2)  # states[36] is normed


def test_official_fp8_folder(model, tokenizer, tmp_path):
    dequantised = write_official_fp8_folder(model, tmp_path / "text_encoder")
    expected = reference_features(with_language_model_weights(model, dequantised), tokenizer, CAPTIONS)[0]
    encoder = load_text_encoder(tmp_path / "text_encoder", dtype=torch.float32)
    assert "stored fp8" in encoder.description
    fp8_layer = encoder.language_model.layers[0].mlp.up_proj
    assert type(fp8_layer).__name__ == "FP8Linear"
    # Never an FP8 tensor-core matmul in the encoder: that would quantise activations too (GPU only).
    assert fp8_layer.matmul == "dequantize"
    assert_matches(encoder, expected)
    # Dequantising on load ("none") gives the same numbers with plain Linear layers.
    assert_matches(load_text_encoder(tmp_path / "text_encoder", dtype=torch.float32, quantize="none"), expected)


@pytest.mark.parametrize("fmt", ["comfy_quant", "legacy", "bf16"])
def test_comfy_single_file(model, tokenizer, tmp_path, fmt):
    path = tmp_path / f"qwen3vl_8b_{fmt}.safetensors"
    stored = write_comfy_single_file(model, path, fmt)
    expected = reference_features(with_language_model_weights(model, stored), tokenizer, CAPTIONS)[0]
    encoder = load_text_encoder(path, dtype=torch.float32)  # no config: inferred from shapes
    assert encoder.tokenizer.source == "the bundled Qwen3-VL tokenizer"
    assert_matches(encoder, expected)


def test_nf4_folder(model, tokenizer, tmp_path):
    dequantised = write_nf4_folder(model, tmp_path / "text_encoder")
    expected = reference_features(with_language_model_weights(model, dequantised), tokenizer, CAPTIONS)[0]
    encoder = load_text_encoder(tmp_path / "text_encoder", dtype=torch.float32)
    assert type(encoder.language_model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    assert_matches(encoder, expected)


@pytest.mark.parametrize("target", ["nf4", "fp8"])
def test_quantise_on_load(model, tokenizer, tmp_path, target):
    from ideogram4_core.model.quant import dequantize_nf4

    folder = write_hf_folder(model, tmp_path / "text_encoder")
    encoder = load_text_encoder(folder, dtype=torch.float32, quantize=target)
    layers = {
        name: module for name, module in encoder.language_model.named_modules()
        if type(module).__name__ in ("Linear4bit", "FP8Linear")
    }
    assert len(layers) == 36 * 7
    effective = {
        f"{name}.weight": dequantize_nf4(m) if target == "nf4" else m.dequantized_weight(torch.float32)
        for name, m in layers.items()
    }
    expected = reference_features(with_language_model_weights(model, effective), tokenizer, CAPTIONS)[0]
    assert_matches(encoder, expected)

    # Against the float weights, so that a wrong scale or block layout fails even where the
    # encoder and its own dequantisation agree. Per layer, relative RMS weight error: e4m3 keeps
    # 3 mantissa bits (worst layer measured 0.027), NF4 16 levels per block of 64 (worst 0.100);
    # bounds 0.035 and 0.16, far below a misread block scale (0.3 and more). On the features after 36 layers of this hidden-32 model the errors
    # compound: relative L2 measured FP8 0.087-0.119, NF4 0.355-0.458 (seeds 0-2); bounds about 1.3x
    # (bitsandbytes 0.50.2's misread block scales, fixed in quant._dequantize_flat, gave NF4 0.76).
    language_model = model.language_model
    weight_errors = {name: rel_rms(effective[f"{name}.weight"], language_model.get_submodule(name).weight)
                     for name in layers}
    worst = max(weight_errors.values())
    features = encoder.encode(CAPTIONS).features
    float_reference = reference_features(model, tokenizer, CAPTIONS)[0]
    feature_error = rel_rms(features, float_reference)
    print(f"{target}: worst layer weight error {worst:.3f}, features {feature_error:.3f} from the float model")
    assert worst <= {"fp8": 0.035, "nf4": 0.16}[target], max(weight_errors, key=weight_errors.get)
    assert feature_error <= {"fp8": 0.16, "nf4": 0.6}[target]


def rel_rms(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).norm() / want.float().norm()).item()


def test_quantised_weights_take_less_memory(model, tmp_path):
    folder = write_hf_folder(model, tmp_path / "text_encoder")
    sizes = {q: load_text_encoder(folder, dtype=torch.bfloat16, quantize=q).memory_bytes() for q in ("none", "fp8", "nf4")}
    linear_bf16 = 36 * 7 * 32 * 64 * 2 * 0.7  # roughly 7 matrices per layer, some smaller
    assert sizes["none"] - sizes["fp8"] > linear_bf16 * 0.3
    assert sizes["fp8"] > sizes["nf4"]


def test_single_caption_has_no_padding_and_offload_moves_weights(model, reference, tmp_path):
    encoder = load_text_encoder(write_hf_folder(model, tmp_path / "te"), dtype=torch.float32)
    out = encoder.encode(CAPTIONS[0])
    n = out.token_counts[0]
    assert out.features.shape == (1, n, 416) and out.attention_mask.all()
    assert (out.features[0] - reference[0, -n:]).abs().max() <= TOLERANCE
    assert encoder.offload().device == torch.device("cpu")
    assert encoder.to("cpu") is encoder


@pytest.mark.parametrize("layout", ["hf_folder", "official_fp8"])
def test_bf16_run_matches_the_reference_run_in_bf16(model, tokenizer, tmp_path, layout):
    """The reference pipelines run the encoder in bf16. Load both sides in bf16, keeping the RoPE
    inverse frequencies in float32 as transformers' from_pretrained does; same tolerance applies."""
    folder = tmp_path / "text_encoder"
    if layout == "hf_folder":
        write_hf_folder(model, folder)
        reference_model = with_language_model_weights(model, {})
    else:
        reference_model = with_language_model_weights(model, write_official_fp8_folder(model, folder))
    inv_freq = reference_model.language_model.rotary_emb.inv_freq.clone()
    reference_model.to(torch.bfloat16)
    reference_model.language_model.rotary_emb.inv_freq = inv_freq
    expected = reference_features(reference_model, tokenizer, CAPTIONS)[0]
    assert_matches(load_text_encoder(folder, dtype=torch.bfloat16), expected)


def test_encoder_accepts_2048_tokens_and_refuses_2049(model, tmp_path):
    from ideogram4_core.text.tokenizer import CaptionTooLongError

    encoder = load_text_encoder(write_hf_folder(model, tmp_path / "te"), dtype=torch.float32)
    overhead = encoder.count_tokens("a")
    at_limit = "a" + " a" * (2048 - overhead)
    out = encoder.encode(at_limit)
    assert out.features.shape == (1, 2048, 416) and out.token_counts == [2048]
    assert torch.isfinite(out.features).all()
    with pytest.raises(CaptionTooLongError, match="2049 tokens.*2048"):
        encoder.encode(["short", at_limit + " a"])  # one caption over the limit refuses the batch
