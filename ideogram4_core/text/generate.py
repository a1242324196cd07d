"""Token-by-token decoding with Qwen3-VL, constrained to the caption schema.

    results = generate(model, tokenizer, [prompt_ids], [constraint], seeds=[7], sampling=Sampling(),
                       device="cuda", on_token=callback)
    results[0].text            # a complete caption, whatever the weights

One prefill over the framed prompt (and the image, for describe), then one step per token with a
KV cache (transformers' DynamicCache). Each step the constraint masks the logits; sampling is
top-k / top-p at a temperature (0: greedy), drawn on the CPU from a `torch.Generator` seeded per
sequence, so a seed gives the same caption on any device for the same logits. The caption is
complete when the grammar is; when `max_tokens` runs out first, the last tokens are rolled back
until the constraint's model-free ending fits (`CaptionConstraint.finish_within`), so the result
is always a complete caption of at most `max_tokens` tokens.

Positions are given explicitly: text positions count real tokens (left padding of a batch is
masked and skipped), and for an image the 3-D MRoPE positions come from transformers'
`Qwen3VLModel.get_rope_index`, continued by its offset while decoding, as transformers' own
`generate` does (the parity test compares token for token).

`on_token(count)` is called after every step: the host updates its progress bar there and may
raise to cancel; the KV cache is dropped on the way out either way.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLModel

from .constraint import CaptionConstraint, ConstraintError, allowed_tokens, mask_words
from .generative import GenerativeQwen3VL
from .tokenizer import IM_END, PAD_TOKEN, Qwen3VLTokenizer

# Qwen3-VL Instruct's recommended sampling (its generation_config): top-k 20, top-p 0.8, T 0.7.
DEFAULT_TOP_K = 20
DEFAULT_TOP_P = 0.8
# Sampling looks for the allowed top-k among this many times k of the largest logits first.
CANDIDATES = 4
# transformers renamed `past_key_values` to `cache` during 5.x (the old name still works, with a warning).
_CACHE_ARGUMENT = "cache" if "cache" in inspect.signature(Qwen3VLModel.forward).parameters else "past_key_values"


@dataclass(frozen=True)
class Sampling:
    """temperature 0 means greedy; max_tokens counts generated tokens (the end-of-turn is not one)."""

    temperature: float = 0.7
    top_k: int = DEFAULT_TOP_K
    top_p: float = DEFAULT_TOP_P
    max_tokens: int = 1024

    def __post_init__(self):
        if not (self.temperature >= 0 and self.top_k >= 1 and 0 < self.top_p <= 1 and self.max_tokens >= 1):
            raise ValueError(f"invalid sampling settings {self}")


@dataclass(frozen=True)
class ImageInput:
    """One preprocessed image: pixel_values (patches, C*T*P*P) and grid_thw (1, 3) long."""

    pixel_values: torch.Tensor
    grid_thw: torch.Tensor


@dataclass
class Generated:
    token_ids: list[int]
    text: str
    ended_by_model: bool  # False: max_tokens ran out and the caption was completed without the model
    prompt_tokens: int
    seconds: float  # whole call (shared by the batch)
    constraint_seconds: float  # this sequence's mask, consume and finishing time


@torch.no_grad()
def generate(model: GenerativeQwen3VL, tokenizer: Qwen3VLTokenizer, prompts: Sequence[Sequence[int]],
             constraints: Sequence[CaptionConstraint | None], seeds: Sequence[int], sampling: Sampling, *,
             device: torch.device | str, image: ImageInput | None = None,
             on_token: Callable[[int], None] | None = None) -> list[Generated]:
    """Generate one sequence per prompt (a batch is left-padded). A constraint of None means
    unconstrained: the sequence ends at the end-of-turn token or at max_tokens."""
    if not (len(prompts) == len(constraints) == len(seeds)) or not prompts:
        raise ValueError("give one constraint and one seed per prompt")
    if image is not None and len(prompts) != 1:
        raise ValueError("an image is described one prompt at a time")
    for constraint in constraints:
        if constraint is not None and constraint.minimum_tokens > sampling.max_tokens:
            raise ValueError(f"max_tokens={sampling.max_tokens} is too few: the shortest caption of this shape takes "
                             f"{constraint.minimum_tokens} tokens")
    start = time.perf_counter()
    device = torch.device(device)
    batch = len(prompts)
    end_ids = {tokenizer._id_of(IM_END), tokenizer._id_of(PAD_TOKEN)}
    pad_id = tokenizer.pad_id
    generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
    tokens: list[list[int]] = [[] for _ in range(batch)]
    active = [True] * batch
    ended = [False] * batch
    constraint_time = [0.0] * batch

    vocab_size = model.config.vocab_size
    words = torch.full((batch, mask_words(vocab_size)), -1, dtype=torch.int32)  # bitmasks, all allowed
    ids, mask, positions = _prefill_inputs(model, prompts, pad_id, device, image)
    cache = DynamicCache(config=model.config)
    try:
        hidden = _forward(model, ids, mask, positions, cache, image)
        for step in range(sampling.max_tokens):
            rows = [row for row in range(batch) if active[row]]
            if len(rows) < batch:
                hidden = hidden[rows]
            logits = model.lm_head(hidden).float().cpu()
            clock = time.perf_counter()
            masks = _fill_masks([constraints[row] for row in rows], words)
            masks_time = (time.perf_counter() - clock) / len(rows)
            chosen = sample_tokens(logits, masks, sampling, [generators[row] for row in rows])
            next_ids = [pad_id] * batch
            for row, token in zip(rows, chosen):
                clock = time.perf_counter()
                if token in end_ids:
                    active[row], ended[row] = False, True
                else:
                    next_ids[row] = token
                    tokens[row].append(token)
                    if constraints[row] is not None:
                        constraints[row].consume(token)
                        if constraints[row].done:
                            active[row], ended[row] = False, True
                constraint_time[row] += masks_time + time.perf_counter() - clock
            if on_token is not None:
                on_token(step + 1)
            if not any(active) or step + 1 == sampling.max_tokens:
                break
            positions = positions[:, :, -1:] + 1
            mask = torch.cat([mask, torch.ones((batch, 1), dtype=mask.dtype, device=device)], dim=1)
            step_ids = torch.tensor(next_ids, dtype=torch.long, device=device)[:, None]
            hidden = _forward(model, step_ids, mask, positions, cache, None)
    finally:
        cache = hidden = logits = None  # free the KV cache even when on_token raised (Cancel)
    results = []
    for row in range(batch):
        if active[row] and constraints[row] is not None:
            clock = time.perf_counter()
            tokens[row] = _complete_within_budget(constraints[row], tokens[row])
            constraint_time[row] += time.perf_counter() - clock
        results.append(Generated(tokens[row], tokenizer.decode(tokens[row]), ended[row], len(prompts[row]),
                                 time.perf_counter() - start, constraint_time[row]))
    return results


def sample_tokens(logits: torch.Tensor, words: torch.Tensor | None, sampling: Sampling,
                  generators: Sequence[torch.Generator]) -> list[int]:
    """One token id per row of (n, vocab) float32 CPU logits, restricted to the tokens allowed by
    the (n, mask_words) int32 bitmasks `words` (None: all), each row drawn with its own generator."""
    count = 1 if sampling.temperature <= 0 else min(sampling.top_k, logits.shape[-1])
    values, indices = _top_allowed(logits, words, count)
    if sampling.temperature <= 0:
        return indices[:, 0].tolist()
    probs = torch.softmax(values / sampling.temperature, dim=-1)  # excluded tokens (-inf) get probability 0
    if sampling.top_p < 1:
        before = torch.cumsum(probs, dim=-1) - probs  # mass of the more likely tokens
        probs = torch.where(before < sampling.top_p, probs, torch.zeros((), dtype=probs.dtype))
    return [int(indices[row, torch.multinomial(probs[row], 1, generator=generator)])
            for row, generator in enumerate(generators)]


def _top_allowed(logits: torch.Tensor, words: torch.Tensor | None, count: int):
    """The `count` largest allowed logits per row and their token ids, largest first (-inf where
    fewer are allowed). Exact and cheap: when `count` allowed tokens are among the row's
    CANDIDATES x count largest logits, they are its answer (every allowed token further down is no
    larger); only the other rows are masked in full."""
    if words is None:
        return torch.topk(logits, count, dim=-1)
    values, indices = torch.topk(logits, min(CANDIDATES * count, logits.shape[-1]), dim=-1)
    allowed = _bits(words, indices)
    enough = allowed.sum(dim=-1) >= count
    first = allowed & (allowed.int().cumsum(dim=-1) <= count)
    top_values = torch.empty((logits.shape[0], count), dtype=values.dtype)
    top_indices = torch.empty((logits.shape[0], count), dtype=indices.dtype)
    top_values[enough] = values[enough][first[enough]].view(-1, count)
    top_indices[enough] = indices[enough][first[enough]].view(-1, count)
    rest = (~enough).nonzero().flatten()
    if len(rest):
        masked = logits[rest].masked_fill_(allowed_tokens(words[rest], logits.shape[-1], invert=True), float("-inf"))
        top_values[rest], top_indices[rest] = torch.topk(masked, count, dim=-1)
        if bool(torch.isneginf(top_values[rest, 0]).any()):
            raise ConstraintError("the caption grammar allows no token here")
    return top_values, top_indices


def _bits(words: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(n, k) bool: bit `ids` of each row's int32 bitmask words."""
    return ((torch.gather(words, 1, ids >> 5) >> (ids & 31).int()) & 1).bool()


def _fill_masks(constraints: Sequence[CaptionConstraint | None], words: torch.Tensor) -> torch.Tensor | None:
    """Each constraint's allowed-token bitmask into a row of the int32 buffer `words` (an
    unconstrained row allows everything); None when no row is constrained."""
    if all(c is None for c in constraints):
        return None
    rows = words[: len(constraints)]
    for row, constraint in enumerate(constraints):
        if constraint is None:
            rows[row] = -1
        else:
            constraint.fill_mask(rows[row])
    return rows


def _complete_within_budget(constraint: CaptionConstraint, tokens: list[int]) -> list[int]:
    """The budget is spent and the caption is still open: drop the last k tokens for a k whose
    model-free ending takes at most k tokens, so the total stays within the budget. Such a k
    exists (k = all: `generate` checked the shortest caption fits). Each try jumps k to at least
    the length of the ending just found, so few endings are computed."""
    drop, dropped = 1, 0
    while drop <= len(tokens):
        constraint.rollback(drop - dropped)
        dropped = drop
        ending = constraint.finish_within(None)
        if len(ending) <= drop:
            constraint.consume_all(ending)
            return tokens[: len(tokens) - drop] + ending
        drop = min(max(drop + 1, len(ending)), len(tokens))
        if drop == dropped:
            break
    raise ConstraintError("no complete caption fits in max_tokens")


def _prefill_inputs(model: GenerativeQwen3VL, prompts, pad_id: int, device: torch.device, image):
    """Left-padded ids and mask (B, L) and explicit positions (4, B, L): row 0 the text positions
    (for the causal mask), rows 1-3 the MRoPE axes. After an image the MRoPE positions run ahead
    of the text positions by a fixed offset, so decoding just adds one to both."""
    length = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), length), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, length - len(prompt):] = torch.as_tensor(list(prompt), dtype=torch.long)
        mask[row, length - len(prompt):] = 1
    ids, mask = ids.to(device), mask.to(device)
    text = (mask.cumsum(-1) - 1).clamp(min=0)
    if image is None:
        return ids, mask, text[None].expand(4, -1, -1)
    extra = {}
    if "mm_token_type_ids" in inspect.signature(model.model.get_rope_index).parameters:  # transformers 5.x
        extra["mm_token_type_ids"] = (ids == model.model.config.image_token_id).int()
    vision, _ = model.model.get_rope_index(ids, image_grid_thw=image.grid_thw.to(device), attention_mask=mask,
                                           **extra)
    return ids, mask, torch.cat([text[None], vision], dim=0)


def _forward(model: GenerativeQwen3VL, ids, mask, positions, cache, image) -> torch.Tensor:
    """Run the model on new tokens; the last position's final hidden state (B, hidden)."""
    extra = {}
    if image is not None:
        extra = dict(pixel_values=image.pixel_values.to(ids.device), image_grid_thw=image.grid_thw.to(ids.device))
    extra[_CACHE_ARGUMENT] = cache
    out = model.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **extra)
    return out.last_hidden_state[:, -1]
