"""Local generation with the loaded Qwen3-VL (magic prompt, describe), in-process.

- Loading: on each published text-encoder layout the LM head and the vision tower are found (or
  their absence is reported with what to download), read only on demand, bit-equal to the file.
- Fidelity: decoding through `GenerativeQwen3VL` (the encoder's language model + parts) gives
  token for token what transformers' own `Qwen3VLForConditionalGeneration.generate` gives on the
  same weights (greedy, float32), for text and for an image through our preprocessing.
- The constraint: thousands of seeds, fuzzed prompts, shapes, temperatures and token budgets on
  random weights all give captions that pass the strict verifier within max_tokens; the same seed
  gives the same caption.

Torch runs on one thread here: on a shared 2-core machine, CPU attention with two threads is up to
a thousand times slower for these tiny shapes (thread hand-offs), which is not what is tested.
"""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
import torch
from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

from ideogram4_core.captions.verify import verify_caption
from ideogram4_core.files.text_encoder_files import TextEncoderFileError
from ideogram4_core.text.caption_grammar import CaptionShape, generation_schema
from ideogram4_core.text.constraint import CaptionConstraint
from ideogram4_core.text.describe import image_token_count, preprocess_image
from ideogram4_core.text.encoder import load_text_encoder
from ideogram4_core.text.generate import Sampling, generate
from ideogram4_core.text.generative import (GenerativeQwen3VL, MissingPartError, load_lm_head, load_vision_tower)
from ideogram4_core.text.magic_prompt import CaptionRequest, finish_caption, magic_prompt, magic_prompt_ids
from ideogram4_core.text.tokenizer import bundled_tokenizer
from prompting_fixtures import (tiny_generative_qwen3vl, write_comfy_file, write_hf_folder_with_head,
                                write_lm_head_folder, write_official_folder, write_text_only_file)
from text_encoder_fixtures import TINY_TEXT_CONFIG

END_IDS = [151645, 151643]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model():
    return tiny_generative_qwen3vl(seed=5)


@pytest.fixture(scope="module")
def layouts(model, tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    effective = {"comfy_fp8": write_comfy_file(model, root / "comfy_fp8.safetensors", "fp8"),
                 "comfy_bf16": write_comfy_file(model, root / "comfy_bf16.safetensors", "bf16")}
    write_hf_folder_with_head(model, root / "hf")
    write_official_folder(model, root / "official")
    write_text_only_file(model, root / "text_only.safetensors")
    write_lm_head_folder(model, root / "lm_head")
    return root, effective


@pytest.fixture(scope="module")
def hf_encoder(layouts):
    return load_text_encoder(layouts[0] / "hf", dtype=torch.float32)


# ---- loading -----------------------------------------------------------------------------------


@pytest.mark.parametrize("layout, head, vision", [
    ("hf", True, True), ("comfy_fp8.safetensors", True, True), ("comfy_bf16.safetensors", True, True),
    ("official", False, True), ("text_only.safetensors", False, False),
])
def test_each_layout_reports_its_parts(layouts, layout, head, vision):
    encoder = load_text_encoder(layouts[0] / layout, dtype=torch.float32)
    assert (encoder.source.has_lm_head, encoder.source.has_vision_tower) == (head, vision)
    # Nothing but the language model is in memory after loading.
    assert not [n for n, _ in encoder.language_model.named_parameters() if "lm_head" in n or "visual" in n]
    if not head:
        with pytest.raises(MissingPartError, match="diffusers/qwen3-vl-8b-instruct-lm-head"):
            load_lm_head(encoder, dtype=torch.float32)
    if not vision:
        with pytest.raises(MissingPartError, match="vision tower.*qwen3vl_8b_fp8_scaled"):
            load_vision_tower(encoder, dtype=torch.float32)


@pytest.mark.parametrize("layout", ["hf", "comfy_fp8.safetensors", "comfy_bf16.safetensors", "official"])
def test_parts_are_the_files_weights(model, layouts, layout):
    """Bit-equal to what the file holds (fp8: e4m3 x scale, dequantised exactly in float32)."""
    root, effective = layouts
    expected = effective.get(layout.split(".")[0], {k: v.float() for k, v in model.state_dict().items()})
    encoder = load_text_encoder(root / layout, dtype=torch.float32)
    head = load_lm_head(encoder, None if layout != "official" else root / "lm_head", dtype=torch.float32)
    assert torch.equal(head.weight, expected["lm_head.weight"])
    vision = load_vision_tower(encoder, dtype=torch.float32)
    for name, param in vision.named_parameters():
        assert torch.equal(param, expected[f"model.visual.{name}"]), name


def test_separate_head_may_be_a_whole_text_encoder_file(model, layouts):
    root, effective = layouts
    encoder = load_text_encoder(root / "official", dtype=torch.float32)
    head = load_lm_head(encoder, root / "comfy_bf16.safetensors", dtype=torch.float32)
    assert torch.equal(head.weight, effective["comfy_bf16"]["lm_head.weight"])


def test_head_of_another_model_is_refused(layouts, tmp_path):
    from safetensors.torch import save_file

    save_file({"lm_head.weight": torch.zeros(1000, 32)}, str(tmp_path / "head.safetensors"))
    save_file({"weight": torch.zeros(1000, 32)}, str(tmp_path / "not_a_head.safetensors"))
    encoder = load_text_encoder(layouts[0] / "official", dtype=torch.float32)
    with pytest.raises(TextEncoderFileError, match=r"shape \(1000, 32\).*\(151936, 32\)"):
        load_lm_head(encoder, tmp_path / "head.safetensors")
    with pytest.raises(TextEncoderFileError, match="no 'lm_head.weight' tensor"):
        load_lm_head(encoder, tmp_path / "not_a_head.safetensors")


def test_parts_are_refused_when_the_file_changed_since_loading(model, layouts, tmp_path):
    path = tmp_path / "te.safetensors"
    shutil.copyfile(layouts[0] / "comfy_bf16.safetensors", path)
    encoder = load_text_encoder(path, dtype=torch.float32)
    write_comfy_file(tiny_generative_qwen3vl(seed=6), path, "bf16")
    with pytest.raises(TextEncoderFileError, match="changed on disk since the text encoder was loaded"):
        load_lm_head(encoder)


# ---- fidelity against transformers ----------------------------------------------------------------


def test_greedy_text_generation_matches_transformers(model, hf_encoder):
    generative = GenerativeQwen3VL(hf_encoder.language_model, load_lm_head(hf_encoder, dtype=torch.float32))
    ids = hf_encoder.tokenizer.frame_chat("You write captions.", "a red fox in the snow")
    ours = generate(generative, hf_encoder.tokenizer, [ids], [None], [0], Sampling(temperature=0, max_tokens=24),
                    device="cpu")[0]
    with torch.no_grad():
        reference = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                   do_sample=False, max_new_tokens=24, eos_token_id=END_IDS, pad_token_id=END_IDS[1])
    assert ours.token_ids == reference[0, len(ids):].tolist()


def test_greedy_image_generation_matches_transformers(model, hf_encoder):
    """Our path: a ComfyUI IMAGE tensor, our preprocessing, our positions. Reference: a PIL image
    through transformers' image processor and transformers' generate."""
    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    pixels = (np.random.RandomState(0).rand(100, 150, 3) * 255).astype(np.uint8)
    vision = load_vision_tower(hf_encoder, dtype=torch.float32)
    generative = GenerativeQwen3VL(hf_encoder.language_model, load_lm_head(hf_encoder, dtype=torch.float32), vision)
    image = preprocess_image(torch.from_numpy(pixels).float() / 255, generative.vision_config)
    processor = Qwen2VLImageProcessorPil(patch_size=16, temporal_patch_size=2, merge_size=2, image_mean=[0.5] * 3,
                                         image_std=[0.5] * 3, size={"shortest_edge": 256 * 256, "longest_edge": 1024 * 1024})
    reference_inputs = processor(images=[Image.fromarray(pixels)], return_tensors="pt")
    assert torch.equal(image.pixel_values, reference_inputs["pixel_values"])
    # 100 x 150 is scaled up to Qwen3-VL's minimum of 256 x 256 pixels: 224 x 320, 14 x 20 patches.
    assert image.grid_thw.tolist() == reference_inputs["image_grid_thw"].tolist() == [[1, 14, 20]]
    ids = hf_encoder.tokenizer.frame_chat("Describe.", "What is this?",
                                          image_tokens=image_token_count(image, generative.vision_config))
    ours = generate(generative, hf_encoder.tokenizer, [ids], [None], [0], Sampling(temperature=0, max_tokens=16),
                    device="cpu", image=image)[0]
    inputs = torch.tensor([ids])
    with torch.no_grad():
        reference = model.generate(input_ids=inputs, attention_mask=torch.ones_like(inputs),
                                   pixel_values=reference_inputs["pixel_values"],
                                   image_grid_thw=reference_inputs["image_grid_thw"],
                                   mm_token_type_ids=(inputs == 151655).int(), do_sample=False, max_new_tokens=16,
                                   eos_token_id=END_IDS, pad_token_id=END_IDS[1])
    assert ours.token_ids == reference[0, len(ids):].tolist()


def test_batched_rows_match_single_rows(hf_encoder):
    """Left padding and explicit positions: a batch gives each row what it gives alone (greedy)."""
    generative = GenerativeQwen3VL(hf_encoder.language_model, load_lm_head(hf_encoder, dtype=torch.float32))
    tok = hf_encoder.tokenizer
    prompts = [tok.frame_chat("S.", "short"), tok.frame_chat("S.", "a much longer prompt with more words in it")]
    alone = [generate(generative, tok, [p], [None], [0], Sampling(temperature=0, max_tokens=12), device="cpu")[0]
             for p in prompts]
    together = generate(generative, tok, prompts, [None, None], [0, 0], Sampling(temperature=0, max_tokens=12),
                        device="cpu")
    assert [r.token_ids for r in together] == [r.token_ids for r in alone]


# ---- the constraint ------------------------------------------------------------------------------


def fuzz_model(scale: float, seed: int) -> GenerativeQwen3VL:
    """A random 2-layer, hidden-8 Qwen3-VL with the real vocabulary (the constraint does not depend
    on depth; the small LM head keeps thousands of sequences affordable). With scale > 1 the LM
    head favours JSON punctuation tokens, so that sampling itself closes strings, adds elements,
    picks element types and fills palettes instead of the finishing step doing it all."""
    text = dict(TINY_TEXT_CONFIG, num_hidden_layers=2, hidden_size=8, intermediate_size=16, num_attention_heads=2,
                num_key_value_heads=1, head_dim=4, rope_parameters=dict(TINY_TEXT_CONFIG["rope_parameters"],
                                                                       mrope_section=[1, 1, 0]))
    vision = dict(depth=1, hidden_size=16, num_heads=2, intermediate_size=32, out_hidden_size=8,
                  deepstack_visual_indexes=[0])
    torch.manual_seed(seed)
    full = Qwen3VLForConditionalGeneration(Qwen3VLConfig(text_config=text, vision_config=vision)).eval()
    vocab = bundled_tokenizer().bpe.get_vocab()
    punctuation = [i for t, i in vocab.items() if any(c in t for c in '"{}[],:#0123456789')]
    with torch.no_grad():
        full.lm_head.weight.normal_(0.0, 1.0)
        full.lm_head.weight[punctuation] *= scale
    return GenerativeQwen3VL(full.model.language_model, full.lm_head)


SHAPES = [CaptionShape(style, bboxes, palettes) for style in (True, False) for bboxes in (True, False)
          for palettes in ("optional", "required", "none")]
FUZZ_TEXT = ["a fox", 'sign saying "OPEN"', "<|im_end|>{\"a\":1}", "\\u00e9 \\ \n\t", "海报 😀", "", "x" * 300]


def fuzz_prompt(rng: random.Random) -> str:
    pieces = rng.sample(FUZZ_TEXT, 3) + ["".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(rng.randrange(20)))]
    return " ".join(pieces).strip() or "empty"


def test_thousands_of_seeds_give_strictly_valid_captions():
    """2048 sequences in 16 batches of 128: every shape, temperatures 0..2, budgets from the shortest
    possible caption of the shape up, three weight draws. Every result passes the strict verifier,
    keeps to its shape and max_tokens, and the only repair it needed is a bbox min/max swap
    (warnings such as a zero-area bbox are allowed: random weights draw such boxes)."""
    tok = bundled_tokenizer()
    rng = random.Random(2026)
    models = [fuzz_model(scale, seed) for scale, seed in ((1.0, 1), (4.0, 2), (8.0, 3))]
    endings = 0
    for batch in range(16):
        shape = SHAPES[batch % len(SHAPES)]
        constraints = [CaptionConstraint(tok, 151936, generation_schema(shape)) for _ in range(128)]
        max_tokens = constraints[0].minimum_tokens + rng.randrange(0, 24)
        request = CaptionRequest(style=shape.style)
        prompts = [magic_prompt_ids(tok, fuzz_prompt(rng), rng.choice([1024, 1920, 768]), 1024, request)
                   for _ in constraints]
        seeds = [rng.randrange(2**63) for _ in constraints]
        sampling = Sampling(temperature=[0.0, 0.4, 0.8, 1.2, 2.0][batch % 5], max_tokens=max_tokens)
        for result in generate(models[batch % 3], tok, prompts, constraints, seeds, sampling, device="cpu"):
            assert len(result.token_ids) <= max_tokens
            issues = verify_caption(result.text, mode="repair", plain_text="pass").issues
            errors = [i for i in issues if i.severity == "error"]
            assert all(i.repaired and i.path.endswith(".bbox") and "_min (" in i.message for i in errors), errors
            caption = json.loads(finish_caption(result.text, strip_bboxes=False))
            assert ("style_description" in caption) == shape.style
            for element in caption["compositional_deconstruction"]["elements"]:
                assert ("bbox" in element) == shape.bboxes
                if shape.palettes != "optional":
                    assert ("color_palette" in element) == (shape.palettes == "required")
            endings += result.ended_by_model
    assert endings >= 5, endings  # sampling itself, not only the finishing step, closed some captions


def test_same_seed_same_caption_and_seeds_differ(hf_encoder):
    generative = GenerativeQwen3VL(hf_encoder.language_model, load_lm_head(hf_encoder, dtype=torch.float32))
    tok = hf_encoder.tokenizer
    runs = {seed: [magic_prompt(generative, tok, "a lighthouse at dusk", CaptionRequest(seed=seed, max_tokens=160),
                                device="cpu").caption for _ in range(2)] for seed in (1, 2)}
    assert runs[1][0] == runs[1][1] and runs[2][0] == runs[2][1]
    assert runs[1][0] != runs[2][0]
    for caption in (runs[1][0], runs[2][0]):
        assert verify_caption(caption, mode="strict").caption == caption
        assert all("bbox" in e for e in json.loads(caption)["compositional_deconstruction"]["elements"])


def test_strip_bboxes_and_no_style(hf_encoder):
    generative = GenerativeQwen3VL(hf_encoder.language_model, load_lm_head(hf_encoder, dtype=torch.float32))
    request = CaptionRequest(seed=4, bboxes="strip", style=False, max_tokens=160)
    caption = json.loads(magic_prompt(generative, hf_encoder.tokenizer, "two cats", request, device="cpu").caption)
    assert "style_description" not in caption
    assert not any("bbox" in e for e in caption["compositional_deconstruction"]["elements"])


def test_max_tokens_below_the_shortest_caption_is_refused(hf_encoder):
    generative = GenerativeQwen3VL(hf_encoder.language_model, load_lm_head(hf_encoder, dtype=torch.float32))
    with pytest.raises(ValueError, match="max_tokens=30 is too few"):
        magic_prompt(generative, hf_encoder.tokenizer, "a cat", CaptionRequest(max_tokens=30), device="cpu")


def test_finishing_from_random_prefixes_without_a_model():
    """The model-free ending completes any valid prefix, within the schema's bound."""
    tok = bundled_tokenizer()
    rng = random.Random(7)
    for trial in range(300):
        shape = SHAPES[trial % len(SHAPES)]
        constraint = CaptionConstraint(tok, 151936, generation_schema(shape))
        tokens = []
        for _ in range(rng.randrange(400)):
            if constraint.done:
                break
            allowed = constraint.allowed()
            allowed[END_IDS] = False
            choices = allowed.nonzero().flatten()
            token = int(choices[rng.randrange(len(choices))])
            if rng.random() < 0.6:  # walk the structure, not only the first string
                closing = [t for t in (tok.encode_text(s)[0] for s in ('"', '",', "}", "]", ",", "0")) if allowed[t]]
                token = rng.choice(closing) if closing else token
            constraint.consume(token)
            tokens.append(token)
        ending = constraint.finish_within(None)
        assert len(ending) <= 160
        verify_caption(finish_caption(tok.decode(tokens + ending), strip_bboxes=False), mode="strict")
