"""LoRA files of every format (ideogram4_core/lora) against diffusers 0.42.1 + peft, host-free.

The same random update is written in each trainer's format (lora_fixtures.py); ours is converted by
the pack and merged into our fp32 DiT (lora.merge_), the oracle loads its own form of it with
`Ideogram4Pipeline.load_lora_weights` (onto `transformer` only) and runs peft's low-rank branch.
Compared: one DiT forward, and the whole sampling loop (latents), at strength 1, at strength 0.5
(= `set_adapters(adapter_weights=[0.5])`) and with two LoRAs chained (= two adapters).

Tolerances (fp32): the merge computes x (W + s B A)^T, peft x W^T + s (x A^T) B^T: the same sum in
another order, a few ulps of O(1) activations (measured max 1e-6 on a forward; the loop tolerance
is test_sampler_parity's 1e-4, for up to 12 guided Euler steps that amplify velocity differences).
"""

from __future__ import annotations

import pytest
import torch
from diffusers.pipelines.ideogram4.pipeline_ideogram4 import Ideogram4Pipeline

import lora_fixtures as lf
from ideogram4_core.lora import (LoraShapeError, LoraWeights, NotIdeogram4LoraError, UnsupportedLoraError,
                                 convert_state_dict, linear_shapes, merge_, patch_targets)
from ideogram4_core.model.packing import conditional_layout, pack_image_tokens, pack_text_features
from ideogram4_core.sampling.sampler import initial_noise, sample
from ideogram4_core.sampling.schedule import PRESETS, preset_plan
from ideogram4_core.sizes import latent_grid
from oracle_models import TINY, model_pair, oracle_pipeline, ours_from, reference_features

FORWARD_TOL = 1e-5
LOOP_TOL = 1e-4


@pytest.fixture(scope="module")
def models():
    cond_ref, cond = model_pair(seed=31)
    uncond_ref, uncond = model_pair(seed=32)
    pipe = oracle_pipeline(cond_ref, uncond_ref)
    return pipe, cond, uncond


@pytest.fixture
def pipe(models):
    pipe = models[0]
    yield pipe
    pipe.unload_lora_weights()  # every test starts from the plain oracle


def update_for(fmt, seed=0):
    return lf.split_update(TINY, seed=seed) if fmt in lf.SPLIT_FORMATS else lf.fused_update(TINY, seed=seed)


def ours_with(base, loras):
    """A fresh copy of our DiT with [(format, update, strength)] converted by the pack and merged."""
    model = ours_from_state(base)
    tables = []
    for fmt, update, strength in loras:
        state, metadata = lf.write_format(update, fmt)
        table, _ = convert_state_dict(state, linear_shapes(model), metadata)
        tables.append((table, strength))
    return merge_(model, tables)


def ours_from_state(model):
    copy = type(model)(model.config)
    copy.load_state_dict(model.state_dict())
    return copy.eval()


def forward_both(ref, ours, seed=1, lengths=(7,), grid=(4, 4), t=0.37):
    gen = torch.Generator().manual_seed(seed)
    image = torch.randn(len(lengths), grid[0] * grid[1], TINY.in_channels, generator=gen)
    feats = torch.randn(len(lengths), max(lengths), TINY.llm_features_dim, generator=gen)
    layout = conditional_layout(list(lengths), *grid)
    x, packed = pack_image_tokens(image, layout), pack_text_features(feats, layout)
    timestep = torch.full((len(lengths),), t)
    pos, seg, ind = Ideogram4Pipeline._prepare_ids(list(lengths), *grid, max(lengths), torch.device("cpu"))
    with torch.no_grad():
        expected = ref(x, timestep, packed, pos, seg, ind, return_dict=False)[0]
        got = ours(x, timestep, layout.indicator, layout.position_ids, packed, layout.attention_mask)
    return expected, got


@pytest.mark.parametrize("fmt", lf.FORMATS)
def test_each_format_forward_equals_diffusers_load_lora_weights(models, pipe, fmt):
    _, cond, _ = models
    update = update_for(fmt)
    pipe.load_lora_weights(lf.oracle_state(update), adapter_name="a")
    plain_expected, _ = forward_both(pipe.transformer, cond)  # sanity: the LoRA changes the output
    expected, got = forward_both(pipe.transformer, ours_with(cond, [(fmt, update, 1.0)]))
    pipe.disable_lora()
    plain, _ = forward_both(pipe.transformer, cond)
    pipe.enable_lora()
    diff = (expected - got).abs().max().item()
    effect = (expected - plain).abs().max().item()
    print(f"{fmt}: max |diff| = {diff:.2e}, LoRA effect {effect:.2e}")
    assert effect > 0.1
    assert diff <= FORWARD_TOL


@pytest.mark.parametrize("fmt", ["ai_toolkit", "onetrainer"])
def test_strength_half_equals_set_adapters_half(models, pipe, fmt):
    _, cond, _ = models
    update = update_for(fmt)
    pipe.load_lora_weights(lf.oracle_state(update), adapter_name="a")
    pipe.set_adapters(["a"], adapter_weights=[0.5])
    expected, got = forward_both(pipe.transformer, ours_with(cond, [(fmt, update, 0.5)]))
    diff = (expected - got).abs().max().item()
    print(f"{fmt} strength 0.5: max |diff| = {diff:.2e}")
    assert diff <= FORWARD_TOL


def test_two_chained_loras_equal_two_adapters(models, pipe):
    _, cond, _ = models
    first, second = lf.fused_update(TINY, seed=1), lf.split_update(TINY, seed=2)
    pipe.load_lora_weights(lf.oracle_state(first), adapter_name="a")
    pipe.load_lora_weights(lf.oracle_state(second), adapter_name="b")
    pipe.set_adapters(["a", "b"], adapter_weights=[1.0, 0.5])
    ours = ours_with(cond, [("kohya", first, 1.0), ("diffusers", second, 0.5)])
    expected, got = forward_both(pipe.transformer, ours)
    diff = (expected - got).abs().max().item()
    print(f"two chained: max |diff| = {diff:.2e}")
    assert diff <= FORWARD_TOL


CAPTION = '{"high_level_description":"a red fox","compositional_deconstruction":{"background":"snow","elements":[]}}'


@pytest.mark.parametrize("case", ["ai_toolkit", "onetrainer_half", "two_chained"])
def test_sampling_loop_equals_pipeline_with_lora_on_transformer_only(models, pipe, case):
    """The loop with the LoRA on the conditional model only (our node's default strengths 1 / 0),
    against the pipeline, which puts it on `transformer` only."""
    _, cond, uncond = models
    width, height, preset, seed = 256, 256, "V4_TURBO_12", 7
    grid_h, grid_w = latent_grid(width, height)
    feats, n = reference_features(pipe, CAPTION, grid_h, grid_w)
    first, second = lf.fused_update(TINY, seed=4), lf.split_update(TINY, seed=5)
    loras = {"ai_toolkit": [("ai_toolkit", first, 1.0)], "onetrainer_half": [("onetrainer", second, 0.5)],
             "two_chained": [("ai_toolkit", first, 1.0), ("onetrainer", second, 0.5)]}[case]
    for i, (_, update, strength) in enumerate(loras):
        pipe.load_lora_weights(lf.oracle_state(update), adapter_name=f"a{i}")
    pipe.set_adapters([f"a{i}" for i in range(len(loras))], adapter_weights=[s for *_, s in loras])
    plan, p = preset_plan(preset, width, height), PRESETS[preset]
    expected = pipe(CAPTION, height=height, width=width, num_inference_steps=p.steps,
                    guidance_schedule=p.guidance_schedule(), mu=p.mu, std=p.std, max_sequence_length=n,
                    generator=torch.Generator("cpu").manual_seed(seed), output_type="latent").images
    with torch.no_grad():
        got = sample(ours_with(cond, loras), uncond, feats, [n], grid_h, grid_w, plan,
                     initial_noise(1, grid_h * grid_w, seed))
        plain = sample(cond, uncond, feats, [n], grid_h, grid_w, plan, initial_noise(1, grid_h * grid_w, seed))
    diff = (expected - got).abs().max().item()
    effect = (expected - plain).abs().max().item()
    print(f"loop {case}: max |diff| = {diff:.2e}, LoRA effect {effect:.2e}")
    assert effect > 0.05
    assert diff <= LOOP_TOL


# -------------------------------------------------------------------------------------------------
# Recognition and errors


SHAPES = linear_shapes(ours_from(model_pair(seed=0)[0]))


@pytest.mark.parametrize("fmt, kind", [("ai_toolkit", "ai-toolkit"), ("kohya", "kohya"), ("kohya_unet", "kohya"),
                                       ("conditional_transformer", "ai-toolkit"), ("diffusers", "diffusers/peft"),
                                       ("onetrainer", "kohya with split q/k/v"), ("peft_metadata", "diffusers/peft")])
def test_format_is_recognised_from_the_keys(fmt, kind):
    state, metadata = lf.write_format(update_for(fmt), fmt)
    table, description = convert_state_dict(state, SHAPES, metadata)
    assert description.startswith(kind), description
    assert sorted(table) == sorted(f"layers.{n}.{m}.weight" for n in range(TINY.num_layers) for m in lf.PER_LAYER)


def test_split_qkv_becomes_one_exact_update_of_the_fused_weight():
    update = lf.split_update(TINY, ranks=(4, 2, 8))
    table, _ = convert_state_dict(lf.write_format(update, "onetrainer")[0], SHAPES)
    fused = table["layers.1.attention.qkv.weight"]
    assert fused.rank == 4 + 2 + 8  # block-diagonal: independent downs of different ranks
    expected = torch.cat([lf.expected_delta(update, f"layers.1.attention.to_{p}") for p in "qkv"])
    assert torch.allclose(fused.delta(), expected, rtol=0, atol=1e-6)
    # diffusers' own split of a fused LoRA (one shared down) is stacked back at the original rank
    shared = convert_state_dict(lf.write_format(lf.fused_update(TINY), "diffusers_shared")[0], SHAPES)[0]
    assert shared["layers.0.attention.qkv.weight"].rank == 4


def test_only_some_of_q_k_v_leave_the_other_rows_unchanged():
    update = {k: v for k, v in lf.split_update(TINY).items() if k.endswith("to_k")}
    table, _ = convert_state_dict(lf.write_format(update, "diffusers")[0], SHAPES)
    delta, h = table["layers.0.attention.qkv.weight"].delta(), TINY.hidden_size
    assert torch.equal(delta[:h], torch.zeros_like(delta[:h])) and torch.equal(delta[2 * h:], torch.zeros_like(delta[:h]))
    assert torch.allclose(delta[h:2 * h], lf.expected_delta(update, "layers.0.attention.to_k"), atol=1e-6)


def test_concat_linear_parts_get_their_rows():
    from ideogram4_core.model.quant import ConcatLinear

    model = ours_from(model_pair(seed=0)[0])
    h = TINY.hidden_size
    parts = [torch.nn.Linear(h, h, bias=False) for _ in range(3)]
    model.layers[0].attention.qkv = ConcatLinear(parts)
    assert linear_shapes(model)["layers.0.attention.qkv.weight"] == (3 * h, h)
    table = {"layers.0.attention.qkv.weight": LoraWeights(torch.randn(3 * h, 2), torch.randn(2, h), 4.0)}
    targets = patch_targets(model, table)
    assert sorted(targets) == [f"layers.0.attention.qkv.parts.{i}.weight" for i in range(3)]
    full = table["layers.0.attention.qkv.weight"].delta()
    for i in range(3):
        assert torch.equal(targets[f"layers.0.attention.qkv.parts.{i}.weight"].delta(), full[i * h:(i + 1) * h])


def test_a_lora_for_another_model_names_its_modules_and_ours():
    flux = {"diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight": torch.zeros(4, 8),
            "diffusion_model.double_blocks.0.img_attn.qkv.lora_B.weight": torch.zeros(8, 4)}
    with pytest.raises(NotIdeogram4LoraError) as err:
        convert_state_dict(flux, SHAPES, source="flux.safetensors")
    message = str(err.value)
    assert "flux.safetensors is not an Ideogram 4 LoRA" in message
    assert "double_blocks.{0-0}.img_attn.qkv" in message or "double_blocks.0.img_attn.qkv" in message
    assert "layers.{0-1}.attention.qkv" in message and "layers.{0-1}.feed_forward.w1" in message


def test_a_model_checkpoint_is_not_a_lora():
    state = {"layers.0.attention.qkv.weight": torch.zeros(3, 3), "layers.0.attention.o.weight": torch.zeros(3, 3)}
    with pytest.raises(NotIdeogram4LoraError, match="looks like a model checkpoint"):
        convert_state_dict(state, SHAPES, source="x")


def test_rank_and_shape_mismatches_are_listed():
    state, _ = lf.write_format(lf.fused_update(TINY), "kohya")
    state["diffusion_model.layers.0.attention.o.lora_up.weight"] = torch.zeros(TINY.hidden_size, 3)  # rank 4 down
    state["diffusion_model.layers.1.feed_forward.w1.lora_down.weight"] = torch.zeros(4, 7)  # in 7, not hidden
    with pytest.raises(LoraShapeError) as err:
        convert_state_dict(state, SHAPES, source="bad.safetensors")
    assert len(err.value.mismatches) == 2
    assert "rank mismatch" in str(err.value) and "layers.1.feed_forward.w1" in str(err.value)
    assert "2 layers, hidden size 256" in str(err.value)


def test_layers_beyond_the_model_are_a_size_mismatch():
    state, _ = lf.write_format(lf.fused_update(TINY), "ai_toolkit")
    state["diffusion_model.layers.7.attention.o.lora_A.weight"] = torch.zeros(4, TINY.hidden_size)
    state["diffusion_model.layers.7.attention.o.lora_B.weight"] = torch.zeros(TINY.hidden_size, 4)
    with pytest.raises(LoraShapeError, match="layers this model does not have"):
        convert_state_dict(state, SHAPES)


@pytest.mark.parametrize("key, kind", [
    ("diffusion_model.layers.0.attention.o.hada_w1_a", "LoHa"),
    ("lora_unet_layers_0_attention_o.lokr_w1", "LoKr"),
    ("diffusion_model.layers.0.attention.o.dora_scale", "DoRA"),
    ("transformer.layers.0.attention.to_out.0.lora_magnitude_vector", "DoRA"),
    ("diffusion_model.layers.0.attention.o.diff", "full weight difference"),
])
def test_other_adapter_kinds_are_refused_by_name(key, kind):
    state, _ = lf.write_format(lf.fused_update(TINY), "kohya")
    state[key] = torch.zeros(2, 2)
    with pytest.raises(UnsupportedLoraError, match=kind):
        convert_state_dict(state, SHAPES)


def test_peft_metadata_saying_dora_is_refused():
    state, metadata = lf.write_format(lf.split_update(TINY), "peft_metadata")
    metadata["lora_adapter_metadata"] = metadata["lora_adapter_metadata"].replace("{", '{"transformer.use_dora": true, ', 1)
    with pytest.raises(UnsupportedLoraError, match="use_dora"):
        convert_state_dict(state, SHAPES, metadata)


def test_a_pickle_is_refused_without_unpickling(tmp_path):
    from ideogram4_core.files.errors import CheckpointError
    from ideogram4_core.lora import load_lora

    for name in ("lora.pt", "lora.ckpt"):
        (tmp_path / name).write_bytes(b"\x80\x04not really")
        with pytest.raises(CheckpointError, match="pickle"):
            load_lora(tmp_path / name, SHAPES)
    disguised = tmp_path / "lora.safetensors"
    disguised.write_bytes(b"\x80\x04" + b"\0" * 64)
    with pytest.raises(CheckpointError, match="pickle"):
        load_lora(disguised, SHAPES)
