"""Our DiT against diffusers' Ideogram4Transformer2DModel with identical tiny random weights.

The README claims the DiT is bit-exact with the reference: in fp32 (and in bf16 with the timestep
rounded as diffusers rounds it) every comparison with diffusers is `torch.equal`, so a one-ulp
change anywhere (for example the timestep as plain `1 - sigma`) fails.
The one comparison that is not with diffusers, a caption alone against the same caption padded and
masked in a batch, is bounded instead: masked attention sums over a longer, zero-weighted row, which
moves fp32 results by a few ulps of O(1) activations (measured 1.4e-6; bound 1e-5).
"""

import pytest
import torch
from diffusers.pipelines.ideogram4.pipeline_ideogram4 import Ideogram4Pipeline

from ideogram4_core.model.transformer import Ideogram4Config
from ideogram4_core.model.packing import conditional_layout, image_only_layout, pack_image_tokens, pack_text_features
from oracle_models import TINY, model_pair

MASKED_VS_UNMASKED_TOL = 1e-5


def _left_padded_features(lengths, dim, seed):
    gen = torch.Generator().manual_seed(seed)
    feats = torch.zeros(len(lengths), max(lengths), dim)
    for b, n in enumerate(lengths):
        feats[b, max(lengths) - n :] = torch.randn(n, dim, generator=gen)
    return feats


def _run_both(ref, ours, lengths, grid_h, grid_w, t, seed=1):
    batch = len(lengths)
    gen = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, grid_h * grid_w, TINY.in_channels, generator=gen)
    feats = _left_padded_features(lengths, TINY.llm_features_dim, seed)

    layout = conditional_layout(lengths, grid_h, grid_w)
    x = pack_image_tokens(image, layout)
    packed_feats = pack_text_features(feats, layout)
    timestep = torch.full((batch,), t)

    pos, seg, ind = Ideogram4Pipeline._prepare_ids(lengths, grid_h, grid_w, max(lengths), torch.device("cpu"))
    with torch.no_grad():
        expected = ref(x, timestep, packed_feats, pos, seg, ind, return_dict=False)[0]
        got = ours(x, timestep, layout.indicator, layout.position_ids, packed_feats, layout.attention_mask)
    return layout, expected, got


@pytest.mark.parametrize("grid", [(4, 4), (2, 12), (12, 2)], ids=["square", "6to1-wide", "1to6-tall"])
def test_single_caption_matches_diffusers(grid):
    ref, ours = model_pair()
    layout, expected, got = _run_both(ref, ours, [7], *grid, t=0.37)
    assert layout.attention_mask is None, "a single caption must run without any attention mask"
    diff = (expected - got).abs().max().item()
    print(f"single caption {grid}: max |diff| = {diff:.2e}")
    assert torch.equal(expected, got)


@pytest.mark.parametrize("grid", [(4, 4), (2, 12)], ids=["square", "6to1"])
def test_padded_batch_of_two_matches_diffusers(grid):
    ref, ours = model_pair()
    layout, expected, got = _run_both(ref, ours, [9, 4], *grid, t=0.81)
    assert layout.attention_mask is not None
    diff = (expected - got).abs().max().item()
    print(f"padded batch {grid}: max |diff| = {diff:.2e}")
    assert torch.equal(expected, got)


def test_image_only_pass_matches_diffusers_with_zero_features():
    """The unconditional pass: diffusers feeds zero text features; we skip the text path."""
    ref, ours = model_pair(seed=3)
    grid_h, grid_w, batch = 3, 5, 2
    image = torch.randn(batch, grid_h * grid_w, TINY.in_channels, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([0.2, 0.9])
    pos, seg, ind = Ideogram4Pipeline._prepare_ids([1, 1], grid_h, grid_w, 1, torch.device("cpu"))
    zeros = torch.zeros(batch, grid_h * grid_w, TINY.llm_features_dim)
    layout = image_only_layout(batch, grid_h, grid_w)
    with torch.no_grad():
        expected = ref(image, t, zeros, pos[:, 1:], seg[:, 1:], ind[:, 1:], return_dict=False)[0]
        got = ours(image, t, layout.indicator, layout.position_ids)
    diff = (expected - got).abs().max().item()
    print(f"image-only pass: max |diff| = {diff:.2e}")
    assert torch.equal(expected, got)


def test_unpadded_unmasked_equals_padded_masked():
    """A caption alone (no padding, no mask) gives the same image velocities as the same caption
    left-padded inside a batch with a longer one (masked)."""
    _, ours = model_pair(seed=5)
    grid_h, grid_w = 4, 6
    gen = torch.Generator().manual_seed(6)
    image = torch.randn(1, grid_h * grid_w, TINY.in_channels, generator=gen)
    short = torch.randn(1, 4, TINY.llm_features_dim, generator=gen)
    long = torch.randn(1, 10, TINY.llm_features_dim, generator=gen)
    t = torch.tensor([0.5])

    alone = conditional_layout([4], grid_h, grid_w)
    batched = conditional_layout([4, 10], grid_h, grid_w)
    feats = torch.cat([torch.cat([torch.zeros(1, 6, TINY.llm_features_dim), short], 1), long])
    with torch.no_grad():
        v_alone = ours(pack_image_tokens(image, alone), t, alone.indicator, alone.position_ids,
                       pack_text_features(short, alone))[:, alone.text_len :]
        v_batched = ours(pack_image_tokens(image.expand(2, -1, -1), batched), t.expand(2), batched.indicator,
                         batched.position_ids, pack_text_features(feats, batched),
                         batched.attention_mask)[:1, batched.text_len :]
    diff = (v_alone - v_batched).abs().max().item()
    print(f"unpadded vs padded: max |diff| = {diff:.2e}")
    assert diff <= MASKED_VS_UNMASKED_TOL


def test_bf16_matches_diffusers_bf16_with_rounded_timestep():
    """In bf16 the reference rounds t to bf16 before the sinusoid; we do it inside the model, so a
    float32 t must give exactly what diffusers gives for the pre-rounded t (same ops, same dtypes)."""
    ref, ours = model_pair(seed=7)
    inv_freq = ref.rotary_emb.inv_freq.clone()
    ref = ref.to(torch.bfloat16)
    # `.to(bf16)` also rounds diffusers' inv_freq buffer, which collapses the 65536-offset image
    # positions; `from_pretrained(torch_dtype=bf16)`, as users load it, keeps it fp32. Do the same.
    ref.rotary_emb.inv_freq = inv_freq
    ours = ours.to(torch.bfloat16).set_compute_dtype(torch.bfloat16)
    layout = conditional_layout([5], 4, 4)
    gen = torch.Generator().manual_seed(8)
    x = pack_image_tokens(torch.randn(1, 16, 128, generator=gen), layout)
    feats = pack_text_features(torch.randn(1, 5, TINY.llm_features_dim, generator=gen), layout)
    t = torch.tensor([0.7123])
    pos, seg, ind = Ideogram4Pipeline._prepare_ids([5], 4, 4, 5, torch.device("cpu"))
    with torch.no_grad():
        expected = ref(x.bfloat16(), t.bfloat16(), feats.bfloat16(), pos, seg, ind, return_dict=False)[0].float()
        got = ours(x, t, layout.indicator, layout.position_ids, feats).float()
    scale = expected.abs().max().item()
    diff = (expected - got).abs().max().item()
    print(f"bf16: max |diff| = {diff:.2e} (output scale {scale:.2f})")
    assert torch.equal(expected, got)


def test_rope_angles_stay_fp32_under_bf16_autocast():
    """Image positions start at 65536, where bf16 cannot tell neighbours apart; the tables must be
    computed in fp32 even inside an ambient bf16 autocast."""
    _, ours = model_pair()
    layout = image_only_layout(1, 8, 8)
    plain = ours.rope(layout.position_ids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = ours.rope(layout.position_ids)
    assert torch.equal(plain[0], autocast[0]) and torch.equal(plain[1], autocast[1])
    # Neighbouring columns must get different angles (a collapse would make them equal).
    assert not torch.equal(plain[0][0, 0], plain[0][0, 1])


def test_config_inferred_from_state_dict():
    ref, ours = model_pair()
    shapes = {k: v.shape for k, v in ours.state_dict().items()}
    assert Ideogram4Config.from_state_dict(shapes) == TINY
    assert Ideogram4Config().hidden_size == 4608 and Ideogram4Config().num_layers == 34


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("lengths, grid", [([7], (4, 4)), ([9, 4], (2, 12))], ids=["single", "padded-batch"])
def test_image_rows_only_are_bit_identical(dtype, lengths, grid):
    """forward(rows_from=text_len), as the sampler and the ComfyUI adapter call it: the last block
    skips the caption rows' output projection and feed-forward. The image rows must be exactly the
    full computation's (torch.equal), in fp32 and in bf16: the cut is row-wise only."""
    ref, ours = model_pair(seed=9)
    ours = ours.to(dtype).set_compute_dtype(dtype)
    layout = conditional_layout(lengths, *grid)
    gen = torch.Generator().manual_seed(10)
    x = pack_image_tokens(torch.randn(len(lengths), grid[0] * grid[1], TINY.in_channels, generator=gen), layout)
    feats = pack_text_features(_left_padded_features(lengths, TINY.llm_features_dim, 11), layout)
    t = torch.rand(len(lengths), generator=gen)
    with torch.no_grad():
        full = ours(x, t, layout.indicator, layout.position_ids, feats, layout.attention_mask)
        cut = ours(x, t, layout.indicator, layout.position_ids, feats, layout.attention_mask, rows_from=layout.text_len)
    assert cut.shape == (len(lengths), grid[0] * grid[1], TINY.in_channels)
    assert torch.equal(cut, full[:, layout.text_len :])
    if dtype == torch.float32 and len(lengths) == 1:
        # Unpadded fp32: the same numbers as diffusers (same formulas, same kernels), to the last bit.
        pos, seg, ind = Ideogram4Pipeline._prepare_ids(lengths, *grid, max(lengths), torch.device("cpu"))
        with torch.no_grad():
            expected = ref(x, t, feats, pos, seg, ind, return_dict=False)[0]
        assert torch.equal(cut, expected[:, layout.text_len :])
