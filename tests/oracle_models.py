"""Tiny random models shared by the parity tests: our DiT and diffusers' (the test-only oracle) with
the same weights, and a diffusers Ideogram4Pipeline around them."""

from __future__ import annotations

import torch

from ideogram4_core.model.keys import diffusers_to_original
from ideogram4_core.model.transformer import Ideogram4Config, Ideogram4Transformer

# head_dim 128 is the smallest that holds the real MRoPE split (3 * 20 = 60 <= 64 frequencies).
TINY = Ideogram4Config(
    num_layers=2, num_heads=2, head_dim=128, intermediate_size=160, adaln_dim=24, llm_features_dim=13 * 16
)


def randomize_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Give every parameter random values (norm weights too, so no path is an identity), small
    enough that 2-layer activations stay O(1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("norm_q.weight") or name.endswith("norm_k.weight") or "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p.shape[-1] if p.ndim > 1 else 16
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in**0.5)
    return module


def diffusers_transformer(cfg: Ideogram4Config = TINY, seed: int = 0):
    from diffusers import Ideogram4Transformer2DModel

    ref = Ideogram4Transformer2DModel(
        in_channels=cfg.in_channels,
        num_layers=cfg.num_layers,
        attention_head_dim=cfg.head_dim,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        adaln_dim=cfg.adaln_dim,
        llm_features_dim=cfg.llm_features_dim,
        rope_theta=int(cfg.rope_theta),
        mrope_section=cfg.mrope_section,
        norm_eps=cfg.norm_eps,
    )
    return randomize_(ref, seed).eval()


def ours_from(ref) -> Ideogram4Transformer:
    """Our DiT holding the oracle's weights, converted from diffusers naming by our own code."""
    state = diffusers_to_original(ref.state_dict())
    model = Ideogram4Transformer(Ideogram4Config.from_state_dict({k: v.shape for k, v in state.items()}))
    model.load_state_dict(state, strict=True)
    return model.eval()


def model_pair(seed: int = 0):
    ref = diffusers_transformer(seed=seed)
    return ref, ours_from(ref)


CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% for part in m['content'] %}{{ part['text'] }}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def byte_tokenizer():
    """A real (if tiny) fast tokenizer: byte-level BPE over the 256 byte symbols, no merges, plus the
    two chat-framing special tokens. Enough for the oracle pipeline's own encode_prompt."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: i for i, symbol in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|im_start|>", "<|im_end|>", "<|endoftext|>"])
    return PreTrainedTokenizerFast(tokenizer_object=tok, chat_template=CHAT_TEMPLATE, pad_token="<|endoftext|>")


def tiny_qwen3vl(hidden: int = 16, seed: int = 0):
    """Qwen3-VL with the real 36 layers (so all 13 taps exist) at a toy width."""
    from transformers import Qwen3VLConfig, Qwen3VLModel

    torch.manual_seed(seed)
    config = Qwen3VLConfig(
        text_config=dict(
            vocab_size=300, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=36,
            num_attention_heads=2, num_key_value_heads=1, head_dim=8, rope_parameters={
                "rope_type": "default", "rope_theta": 5_000_000.0, "mrope_section": [2, 1, 1],
                "mrope_interleaved": True},
        ),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=hidden,
                           deepstack_visual_indexes=[0]),
    )
    return Qwen3VLModel(config).eval()


def reference_token_count(tokenizer, caption: str) -> int:
    """The caption's length in the reference tokenizer once framed as the pipeline frames it: the
    `max_sequence_length` that makes diffusers encode it with no padding."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": caption}]}],
                                         add_generation_prompt=True, tokenize=False)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def reference_features(pipe, caption: str, grid_h: int, grid_w: int):
    """diffusers' text features for `caption` (its text rows only) and their count."""
    n = reference_token_count(pipe.tokenizer, caption)
    with torch.no_grad():
        packed = pipe.encode_prompt(caption, grid_h, grid_w, max_sequence_length=n, device=torch.device("cpu"))[0]
    return packed[:, :n], n  # diffusers returns them already packed over text + image rows


def tiny_flux2_vae():
    from diffusers import AutoencoderKLFlux2

    # Four levels so the pipeline's vae_scale_factor is the real 8; the decoder is not run here.
    return AutoencoderKLFlux2(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4).eval()


def oracle_pipeline(cond_ref, uncond_ref):
    from diffusers import FlowMatchEulerDiscreteScheduler, Ideogram4Pipeline

    text_encoder = tiny_qwen3vl(hidden=cond_ref.config.llm_features_dim // 13)
    return Ideogram4Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=tiny_flux2_vae(),
        text_encoder=text_encoder,
        tokenizer=byte_tokenizer(),
        transformer=cond_ref,
        unconditional_transformer=uncond_ref,
    )
