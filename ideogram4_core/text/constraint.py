"""Schema-constrained decoding of captions with llguidance.

    constraint = CaptionConstraint(tokenizer, vocab_size=151936, schema=generation_schema(shape))
    allowed = constraint.allowed()        # (vocab,) bool: the tokens that keep the output valid
    constraint.consume(token_id)
    constraint.done                       # the caption is complete
    constraint.finish_within(budget)      # a short valid ending, or None

llguidance compiles the JSON Schema (with `COMPILE_OPTIONS`) into a grammar over the Qwen3-VL
vocabulary and computes, per step, the set of tokens that keep the text a prefix of some valid
caption. It was chosen after measuring outlines-core, xgrammar and lm-format-enforcer on this very
schema and vocabulary (docs/prompting.md, scripts/compare_constraint_libraries.py): it has no
dependencies at all (xgrammar requires torch and triton), accepts every valid caption (xgrammar
refuses escapes in length-bounded strings, lm-format-enforcer refuses valid captions, allows
whitespace and reorders keys), and needs no index build (outlines-core needs 36-72 s per schema).

A token budget cannot be part of the grammar, yet the output must be a complete caption whatever
the weights. `finish_within` therefore completes the caption without the model: closing
brackets and quotes first, then the shortest required content ("0", forced keys). When the budget
runs out, the generator rolls the matcher back until such an ending fits (see generate.py).
"""

from __future__ import annotations

import json
import threading

import numpy as np
import torch

try:
    import llguidance
    import llguidance.torch
except ImportError:  # the pack was updated without re-installing requirements.txt
    llguidance = None

from .caption_grammar import COMPILE_OPTIONS
from .tokenizer import IM_END, PAD_TOKEN, Qwen3VLTokenizer

# Finishing prefers the token that closes the most. Inside a string: one that ends the string and
# closes brackets after it ('"', '"}', '"}]}}', ...), else "." as the shortest content. Outside:
# closing brackets only, else the quote that opens the next required key or value, the separator
# towards it, or the shortest value ("0": a digit, a hex digit). A space is allowed only inside a
# free-text string, which tells the two apart (brackets inside a string are just text).
CLOSING_BRACKETS = frozenset("]}")
OUTSIDE_MINIMAL = ('"', ",", "0")
STRING_CONTENT = "."
SPACE = "\u0120"  # " " in the byte-level vocabulary
# Finishing is bounded by the schema (the longest minimal caption is about 110 tokens); this only
# guards against a bug looping.
FINISH_LIMIT = 4096


class ConstraintError(RuntimeError):
    """The grammar refused a token or could not be built: a bug, never a user error."""


class _VocabularyTables:
    """Per tokenizer: llguidance's tokenizer (about 1 s to build) and the finishing preference order."""

    def __init__(self, tokenizer: Qwen3VLTokenizer, vocab_size: int):
        if llguidance is None:
            raise ImportError("the magic prompt and describe need the llguidance package, which is missing: run "
                              "'pip install -r requirements.txt' in ComfyUI's Python environment (it has no "
                              "dependencies and leaves torch alone), then restart ComfyUI")
        self.vocab_size = vocab_size
        self.eos_ids = [tokenizer._id_of(IM_END), tokenizer._id_of(PAD_TOKEN)]
        self.ll_tokenizer = llguidance.LLTokenizer(_tokenizer_json(tokenizer), n_vocab=vocab_size,
                                                   eos_token=self.eos_ids)
        # Printable ASCII stands for itself in the byte-level vocabulary, so no decoding is needed.
        vocab = tokenizer.bpe.get_vocab(with_added_tokens=False)
        longest_first = lambda ids: sorted(ids, key=lambda i: (-len(texts[i]), i))  # noqa: E731
        texts = {i: t for t, i in vocab.items()}
        string_ends = longest_first(i for i, t in texts.items() if t[0] == '"' and set(t[1:]) <= CLOSING_BRACKETS)
        brackets = longest_first(i for i, t in texts.items() if set(t) <= CLOSING_BRACKETS)
        minimal = [vocab[t] for t in OUTSIDE_MINIMAL]
        self.space_id = vocab[SPACE]
        self.outside_string = np.array(brackets + minimal, dtype=np.int64)
        self.inside_string = np.array(string_ends + [vocab[STRING_CONTENT]], dtype=np.int64)


_TABLES: dict[tuple[int, int], tuple[Qwen3VLTokenizer, _VocabularyTables]] = {}
_TABLES_LOCK = threading.Lock()


def vocabulary_tables(tokenizer: Qwen3VLTokenizer, vocab_size: int) -> _VocabularyTables:
    """Built once per tokenizer object and vocabulary size (the tokenizer is kept alive with it)."""
    key = (id(tokenizer), vocab_size)
    with _TABLES_LOCK:
        if key not in _TABLES:
            if len(_TABLES) >= 4:
                _TABLES.pop(next(iter(_TABLES)))
            _TABLES[key] = (tokenizer, _VocabularyTables(tokenizer, vocab_size))
        return _TABLES[key][1]


def _tokenizer_json(tokenizer: Qwen3VLTokenizer) -> str:
    """The tokenizer as a tokenizers JSON with its added (control) tokens at their own ids, which
    llguidance needs to know (they can never appear inside a caption string)."""
    data = json.loads(tokenizer.bpe.to_str())
    data["added_tokens"] = [
        {"id": token_id, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for token_id, content in sorted(tokenizer.added_tokens.items())
    ]
    return json.dumps(data)


class _Compiled:
    """A compiled grammar: a matcher in its start state to copy, and the length of the shortest
    caption it allows (the least max_tokens that can work)."""

    def __init__(self, tables: _VocabularyTables, schema: dict):
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=COMPILE_OPTIONS)
        self.start = llguidance.LLMatcher(tables.ll_tokenizer, grammar, log_level=0)
        _check(self.start)
        self.minimum_tokens = len(_finish(self.start, tables, budget=None))


_COMPILED: dict[tuple[int, str], _Compiled] = {}


def _compiled(tables: _VocabularyTables, schema: dict) -> _Compiled:
    key = (id(tables), json.dumps(schema, sort_keys=True))
    with _TABLES_LOCK:
        if key not in _COMPILED:
            if len(_COMPILED) >= 32:
                _COMPILED.pop(next(iter(_COMPILED)))
            _COMPILED[key] = _Compiled(tables, schema)
        return _COMPILED[key]


class CaptionConstraint:
    """One caption being generated under `schema`; not shared between sequences. The grammar is
    compiled once per schema and tokenizer; each constraint starts from a copy."""

    def __init__(self, tokenizer: Qwen3VLTokenizer, vocab_size: int, schema: dict):
        self.tables = vocabulary_tables(tokenizer, vocab_size)
        compiled = _compiled(self.tables, schema)
        self.matcher = compiled.start.deep_copy()
        self.minimum_tokens = compiled.minimum_tokens
        self._bitmask = llguidance.torch.allocate_token_bitmask(1, vocab_size)

    @property
    def done(self) -> bool:
        """The caption is complete: nothing but the end-of-turn token may follow."""
        return self.matcher.is_stopped() or self.matcher.is_accepting()

    def allowed(self) -> torch.Tensor:
        """(vocab,) bool mask of the tokens that keep the output a valid caption prefix."""
        return allowed_tokens(_mask_words(self.matcher, self._bitmask)[None], self.tables.vocab_size)[0]

    def fill_mask(self, words: torch.Tensor) -> None:
        """Write the allowed-token bitmask into `words`, one contiguous int32 row of
        `mask_words(vocab_size)` words (see `allowed_tokens`)."""
        self.matcher.unsafe_compute_mask_ptr(words.data_ptr(), words.numel() * words.element_size())

    def is_end(self, token_id: int) -> bool:
        return token_id in self.tables.eos_ids

    def consume(self, token_id: int) -> None:
        if not self.matcher.consume_token(token_id):
            raise ConstraintError(f"the caption grammar refused token {token_id}: {self.matcher.get_error()}")

    def consume_all(self, token_ids: list[int]) -> None:
        if not self.matcher.consume_tokens(token_ids):
            raise ConstraintError(f"the caption grammar refused tokens {token_ids}: {self.matcher.get_error()}")

    def rollback(self, count: int) -> None:
        if not self.matcher.rollback(count):
            raise ConstraintError(f"the caption grammar could not roll back {count} tokens: {self.matcher.get_error()}")

    def finish_within(self, budget: int | None) -> list[int] | None:
        """Tokens that complete the caption from here, chosen without the model: forced tokens, else
        the most-closing allowed token, else the shortest content. None when that takes more than
        `budget` tokens (None: no limit). The matcher itself is not advanced."""
        return _finish(self.matcher, self.tables, budget)


def _finish(matcher, tables: _VocabularyTables, budget: int | None) -> list[int] | None:
    """See CaptionConstraint.finish_within; works on a copy of `matcher`."""
    matcher = matcher.deep_copy()
    bitmask = llguidance.torch.allocate_token_bitmask(1, tables.vocab_size)
    limit = budget if budget is not None else FINISH_LIMIT
    tokens: list[int] = []
    while not (matcher.is_stopped() or matcher.is_accepting()):
        if len(tokens) >= limit:
            if budget is None:
                raise ConstraintError(f"finishing a caption took more than {FINISH_LIMIT} tokens")
            return None
        forced = matcher.compute_ff_tokens()
        if forced:
            take = forced[: limit - len(tokens)]
            matcher.consume_tokens(take)
            _check(matcher)
            tokens += take
            continue
        words = _mask_words(matcher, bitmask).view(np.uint32)
        order = tables.inside_string if _bit(words, np.array([tables.space_id]))[0] else tables.outside_string
        preferred = order[_bit(words, order)]
        token = int(preferred[0]) if len(preferred) else _first_allowed(words, tables)
        matcher.consume_token(token)
        _check(matcher)
        tokens.append(token)
    return tokens


def mask_words(vocab_size: int) -> int:
    """int32 words of one allowed-token bitmask."""
    return (vocab_size + 31) // 32


def allowed_tokens(words: np.ndarray | torch.Tensor, vocab_size: int, invert: bool = False) -> torch.Tensor:
    """(n, words) int32 bitmasks (bit i of word j: token 32 j + i) -> (n, vocab) bool; with
    `invert`, True marks the tokens that are not allowed."""
    words = np.ascontiguousarray(words.numpy() if isinstance(words, torch.Tensor) else words)
    bits = np.unpackbits((~words if invert else words).view(np.uint8), axis=-1, bitorder="little")
    return torch.from_numpy(bits[:, :vocab_size]).view(torch.bool)


def _check(matcher) -> None:
    if matcher.is_error():
        raise ConstraintError(f"caption grammar error: {matcher.get_error()}")


def _mask_words(matcher, bitmask: torch.Tensor) -> np.ndarray:
    """The allowed-token bitmask, one bit per token id, as int32 words."""
    llguidance.torch.fill_next_token_bitmask(matcher, bitmask)
    return bitmask[0].numpy()


def _bit(words: np.ndarray, ids: np.ndarray) -> np.ndarray:
    return ((words[ids >> 5] >> (ids & 31).astype(np.uint32)) & 1).astype(bool)


def _first_allowed(words: np.ndarray, tables: _VocabularyTables) -> int:
    bits = np.unpackbits(words.view(np.uint8), bitorder="little")[: tables.vocab_size]
    bits[tables.eos_ids] = 0
    return int(np.flatnonzero(bits)[0])
