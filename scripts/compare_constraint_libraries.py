"""Compare constrained-decoding libraries on the caption schema with the Qwen3-VL vocabulary: the
measurement behind the choice of llguidance (docs/prompting.md).

For each library installed (llguidance, xgrammar, outlines-core, lm-format-enforcer; only
llguidance is a dependency of the pack, `pip install` the others to compare), on
`generation_schema()` (style block, bboxes, optional palettes) and the 151,936-token vocabulary:
- setup: tokenizer tables + grammar compilation (what a first generation pays once);
- realistic: the official prompting-guide captions (bboxes added where they have none), token by
  token as the model would emit them: does the library accept each one, and how long does a
  mask + advance take per token;
- random: 5 walks of up to 300 tokens picking uniformly among the allowed tokens (what random
  weights do; mostly inside long strings), mask + advance per token; the first walk's start is
  printed, which shows whitespace, key order and escapes the library lets through.
All numbers are wall-clock on this machine, one process, libraries one after another.

    python scripts/compare_constraint_libraries.py [--libraries llguidance xgrammar] [--steps 300]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import jsonschema
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from ideogram4_core.captions.build import serialize_caption  # noqa: E402
from ideogram4_core.text.caption_grammar import COMPILE_OPTIONS, generation_schema  # noqa: E402
from ideogram4_core.text.constraint import _tokenizer_json, allowed_tokens  # noqa: E402
from ideogram4_core.text.tokenizer import bundled_tokenizer  # noqa: E402

VOCAB = 151936
EOS = 151645
GUIDE = REPO / "tests" / "fixtures" / "captions" / "prompting_guide.json"


def realistic_captions(schema: dict) -> list[str]:
    texts = []
    for caption in json.loads(GUIDE.read_text())["examples"].values():
        for i, element in enumerate(caption["compositional_deconstruction"]["elements"]):
            if "bbox" not in element:
                items = list(element.items())
                items.insert(1, ("bbox", [100 + 10 * i, 120, 500, 900]))
                element.clear()
                element.update(items)
        if jsonschema.Draft202012Validator(schema).is_valid(caption):
            texts.append(serialize_caption(caption))
    return texts


def hf_tokenizer():
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_tokenizer_json(bundled_tokenizer())),
                                   eos_token="<|im_end|>", pad_token="<|endoftext|>")


def bits_to_ids(words: np.ndarray) -> np.ndarray:
    return np.flatnonzero(allowed_tokens(words[None], VOCAB)[0].numpy())


class Llguidance:
    name = "llguidance"

    def __init__(self, hf, schema):
        import llguidance
        import llguidance.torch

        self.ll, self.llt = llguidance, llguidance.torch
        tokenizer = llguidance.LLTokenizer(_tokenizer_json(bundled_tokenizer()), n_vocab=VOCAB, eos_token=[EOS])
        self.grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=COMPILE_OPTIONS)
        self.start = llguidance.LLMatcher(tokenizer, self.grammar, log_level=0)

    def new(self):
        return [self.start.deep_copy(), self.llt.allocate_token_bitmask(1, VOCAB)]

    def mask(self, state):
        self.llt.fill_next_token_bitmask(state[0], state[1])
        return state[1][0].numpy()

    def advance(self, state, token):
        assert state[0].consume_token(token), state[0].get_error()


class Xgrammar:
    name = "xgrammar"

    def __init__(self, hf, schema):
        import xgrammar

        self.x = xgrammar
        info = xgrammar.TokenizerInfo.from_huggingface(hf, vocab_size=VOCAB, stop_token_ids=[EOS])
        self.compiled = xgrammar.GrammarCompiler(info).compile_json_schema(
            json.dumps(schema), any_whitespace=False, strict_mode=True, separators=(",", ":"))

    def new(self):
        return [self.x.GrammarMatcher(self.compiled), self.x.allocate_token_bitmask(1, VOCAB)]

    def mask(self, state):
        state[0].fill_next_token_bitmask(state[1])
        return state[1][0].numpy()

    def advance(self, state, token):
        assert state[0].accept_token(token)


class OutlinesCore:
    name = "outlines-core"

    def __init__(self, hf, schema):
        from outlines_core import Guide, Index, Vocabulary
        from outlines_core.json_schema import build_regex_from_schema
        from transformers.convert_slow_tokenizer import bytes_to_unicode

        self.guide = Guide
        byte_of = {v: k for k, v in bytes_to_unicode().items()}
        special = set(hf.all_special_ids) | set(hf.added_tokens_decoder)
        vocab = {}
        for token_id in range(len(hf)):
            text = hf.convert_ids_to_tokens(token_id)
            if token_id not in special and text is not None:
                vocab.setdefault(bytes(byte_of[c] for c in text), []).append(token_id)
        regex = build_regex_from_schema(json.dumps(schema), whitespace_pattern="")
        self.index = Index(regex, Vocabulary(EOS, vocab))

    def new(self):
        return [self.guide(self.index), torch.zeros((1, (VOCAB + 31) // 32), dtype=torch.int32)]

    def mask(self, state):
        state[0].write_mask_into(state[1].data_ptr(), state[1].numel(), state[1].element_size())
        return state[1][0].numpy()

    def advance(self, state, token):
        state[0].advance(token)


class LmFormatEnforcer:
    """lm-format-enforcer 0.11.3's transformers integration does not import under transformers 5,
    so its tokenizer table is built here the way its build_token_enforcer_tokenizer_data does."""

    name = "lm-format-enforcer"

    def __init__(self, hf, schema):
        from lmformatenforcer import JsonSchemaParser, TokenEnforcer, TokenEnforcerTokenizerData

        special = set(hf.all_special_ids) | set(hf.added_tokens_decoder)
        zero = hf.encode("0", add_special_tokens=False)[-1]
        regular = []
        for token_id in range(len(hf)):
            if token_id not in special:
                after_zero = hf.decode([zero, token_id])[1:]
                regular.append((token_id, after_zero, len(after_zero) > len(hf.decode([token_id]))))
        data = TokenEnforcerTokenizerData(regular, lambda t: hf.decode(t).rstrip("\ufffd"), EOS, False, VOCAB)
        self.make = lambda: TokenEnforcer(data, JsonSchemaParser(schema))

    def new(self):
        return [self.make(), []]

    def mask(self, state):
        result = state[0].get_allowed_tokens(state[1])
        ids = np.array(getattr(result, "allowed_tokens", result), dtype=np.int64)
        words = np.zeros((VOCAB + 31) // 32, dtype=np.uint32)
        np.bitwise_or.at(words, ids >> 5, (np.uint32(1) << (ids & 31).astype(np.uint32)))
        return words.view(np.int32)

    def advance(self, state, token):
        state[1] = state[1] + [token]


LIBRARIES = {cls.name: cls for cls in (Llguidance, Xgrammar, OutlinesCore, LmFormatEnforcer)}


def measure(library, hf, captions: list[list[int]], steps: int) -> dict:
    accepted, forced_time, forced_steps, rejected_at = 0, 0.0, 0, None
    for tokens in captions:
        state = library.new()
        for position, token in enumerate(tokens):
            start = time.perf_counter()
            words = library.mask(state)
            forced_time += time.perf_counter() - start
            if token not in set(bits_to_ids(words).tolist()):
                rejected_at = rejected_at or hf.decode(tokens[max(0, position - 8): position + 1])
                break
            start = time.perf_counter()
            library.advance(state, token)
            forced_time += time.perf_counter() - start
            forced_steps += 1
        else:
            accepted += EOS in set(bits_to_ids(library.mask(state)).tolist())
    walk_time, walk_steps, sample = 0.0, 0, ""
    for walk in range(5):
        rng, state, tokens = random.Random(walk), library.new(), []
        for _ in range(steps):
            start = time.perf_counter()
            words = library.mask(state)
            walk_time += time.perf_counter() - start
            ids = bits_to_ids(words)
            token = int(ids[rng.randrange(len(ids))]) if len(ids) else EOS
            if token == EOS:
                break
            start = time.perf_counter()
            library.advance(state, token)
            walk_time += time.perf_counter() - start
            walk_steps += 1
            tokens.append(token)
        sample = sample or hf.decode(tokens)[:120]
    return {"accepted": f"{accepted}/{len(captions)}", "rejected_at": rejected_at,
            "realistic_us_per_token": 1e6 * forced_time / max(forced_steps, 1),
            "random_us_per_token": 1e6 * walk_time / max(walk_steps, 1), "random_walk_start": sample}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--libraries", nargs="+", choices=list(LIBRARIES), default=list(LIBRARIES))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    sys.setrecursionlimit(10000)
    schema = generation_schema()
    hf = hf_tokenizer()
    captions = [hf.encode(text, add_special_tokens=False) for text in realistic_captions(schema)]
    report = {}
    for name in args.libraries:
        start = time.perf_counter()
        try:
            library = LIBRARIES[name](hf, schema)
        except ImportError as exc:
            print(f"{name}: not installed ({exc})")
            continue
        setup = time.perf_counter() - start
        report[name] = {"setup_s": setup, **measure(library, hf, captions, args.steps)}
        r = report[name]
        print(f"{name:20s} setup {setup:7.2f} s | accepts {r['accepted']} realistic captions"
              f"{' (refused at ' + repr(r['rejected_at']) + ')' if r['rejected_at'] else ''} | "
              f"{r['realistic_us_per_token']:8.1f} us/token realistic | {r['random_us_per_token']:8.1f} us/token random")
        print(f"{'':20s} random walk starts {r['random_walk_start'][:100]!r}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
