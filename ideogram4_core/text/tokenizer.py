"""Qwen3-VL tokenization for Ideogram 4 captions (spec §C.3), fully offline.

The model conditions on one user turn with no system prompt and no think block:

    <|im_start|>user\\n{caption}<|im_end|>\\n<|im_start|>assistant\\n

This module builds that framing itself; no tokenizer chat template is ever used (Qwen2.5-era
templates add a system prompt, Qwen3 ones may add a think block).

Caption text can never become control tokens. The reference pipelines tokenize the rendered
string with the tokenizer's added tokens active, so a caption that contains e.g. "<|im_end|>" would
close the user turn early there. Here the framing ids are inserted directly and all text goes
through the plain byte-level BPE with no added tokens, so such a caption is encoded as the
literal characters. For every caption that contains none of the added-token strings (checked by
`contains_added_token`) the ids equal the reference tokenizer's exactly.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE

from ..constants import MAX_TEXT_TOKENS

BUNDLED_TOKENIZER_DIR = Path(__file__).with_name("qwen3vl_tokenizer")

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"

# Qwen's pre-tokenizer split (the same pattern in every Qwen2/2.5/3 tokenizer.json): contractions,
# letters with one leading non-letter, single digits, punctuation runs, newlines, spaces.
QWEN_PRETOKENIZE_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


class CaptionTooLongError(ValueError):
    """The framed caption has more tokens than the model accepts; it is never truncated."""

    def __init__(self, token_count: int, limit: int = MAX_TEXT_TOKENS):
        self.token_count = token_count
        self.limit = limit
        super().__init__(
            f"caption is {token_count} tokens after chat framing, over the Ideogram 4 limit of "
            f"{limit}; shorten it by at least {token_count - limit} tokens (it is never truncated)"
        )


class TokenizerFilesError(ValueError):
    """A tokenizer folder is missing files or lacks the Qwen chat tokens."""


@dataclass(frozen=True)
class Qwen3VLTokenizer:
    """Byte-level BPE without added tokens, plus the added-token table for framing and decoding.

    `bpe` must not know any added tokens: that is what keeps caption text from turning into control
    tokens. `added_tokens` maps id -> content (e.g. 151644 -> "<|im_start|>").
    """

    bpe: Tokenizer
    added_tokens: dict[int, str]
    source: str

    @property
    def im_start_id(self) -> int:
        return self._id_of(IM_START)

    @property
    def im_end_id(self) -> int:
        return self._id_of(IM_END)

    @property
    def pad_id(self) -> int:
        return self._id_of(PAD_TOKEN)

    def _id_of(self, content: str) -> int:
        for token_id, text in self.added_tokens.items():
            if text == content:
                return token_id
        raise TokenizerFilesError(f"tokenizer from {self.source} has no {content!r} token")

    def encode_text(self, text: str) -> list[int]:
        """Plain text to BPE ids (NFC-normalised, never producing added-token ids)."""
        return self.bpe.encode(text, add_special_tokens=False).ids

    def frame(self, caption: str) -> list[int]:
        """Token ids of the framed caption, with no length check.

        "user\\n" and the caption are encoded as one piece, as the reference does: the tokenizer
        only splits text at added tokens, and a caption starting with a newline or space merges
        with the "\\n" after "user".
        """
        return (
            [self.im_start_id]
            + self.encode_text("user\n" + caption)
            + [self.im_end_id]
            + self.encode_text("\n")
            + [self.im_start_id]
            + self.encode_text("assistant\n")
        )

    def frame_chat(self, system: str, user: str, image_tokens: int = 0) -> list[int]:
        """Ids of a system turn and a user turn, then the assistant's turn opened (for generation).

        With `image_tokens` > 0 the user turn starts with one image, as Qwen3-VL's chat template
        places it: <|vision_start|>, that many <|image_pad|> placeholders, <|vision_end|>. As in
        `frame`, text never becomes control tokens, and text between two control tokens is encoded
        as one piece, as the reference tokenizes the rendered template.
        """
        if image_tokens:
            image = [self._id_of(VISION_START)] + [self._id_of(IMAGE_PAD)] * image_tokens + [self._id_of(VISION_END)]
            user_turn = self.encode_text("user\n") + image + self.encode_text(user)
        else:
            user_turn = self.encode_text("user\n" + user)
        return (
            [self.im_start_id] + self.encode_text("system\n" + system) + [self.im_end_id] + self.encode_text("\n")
            + [self.im_start_id] + user_turn + [self.im_end_id]
            + self.encode_text("\n") + [self.im_start_id] + self.encode_text("assistant\n")
        )

    def count_tokens(self, caption: str) -> int:
        """Number of tokens the model will see for this caption (framing included)."""
        return len(self.frame(caption))

    def tokenize_caption(self, caption: str, limit: int = MAX_TEXT_TOKENS) -> list[int]:
        """Framed ids, refusing (never truncating) captions over `limit` tokens."""
        ids = self.frame(caption)
        if len(ids) > limit:
            raise CaptionTooLongError(len(ids), limit)
        return ids

    def contains_added_token(self, caption: str) -> list[str]:
        """Added-token strings found in the caption (encoded here as literal text, see module doc)."""
        return [text for text in self.added_tokens.values() if text in caption]

    def decode(self, ids: list[int]) -> str:
        """Ids back to text; added tokens are shown by their content."""
        pieces: list[str] = []
        run: list[int] = []
        for token_id in ids:
            if token_id in self.added_tokens:
                if run:
                    pieces.append(self.bpe.decode(run, skip_special_tokens=False))
                    run = []
                pieces.append(self.added_tokens[token_id])
            else:
                run.append(token_id)
        if run:
            pieces.append(self.bpe.decode(run, skip_special_tokens=False))
        return "".join(pieces)

    @property
    def vocab_size(self) -> int:
        """One past the largest id this tokenizer can produce."""
        return max(self.bpe.get_vocab_size(with_added_tokens=False), max(self.added_tokens) + 1)


def _bpe_from_vocab_and_merges(vocab_path: Path, merges_path: Path) -> Tokenizer:
    """Qwen's byte-level BPE pipeline: NFC, regex split, byte-level mapping, no unk, no prefix space."""
    bpe = Tokenizer(BPE.from_file(str(vocab_path), str(merges_path), fuse_unk=False, byte_fallback=False))
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    return bpe


def _bpe_from_tokenizer_json(path: Path) -> tuple[Tokenizer, dict[int, str]]:
    """Load a tokenizer.json with its added tokens removed (they are returned separately)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    added = {int(t["id"]): t["content"] for t in data.get("added_tokens", [])}
    data["added_tokens"] = []
    data["post_processor"] = None
    data["truncation"] = None
    data["padding"] = None
    return Tokenizer.from_str(json.dumps(data)), added


def _added_tokens_from_config(path: Path) -> dict[int, str]:
    """`added_tokens_decoder` of a transformers tokenizer_config.json."""
    config = json.loads(path.read_text(encoding="utf-8"))
    return {int(k): v["content"] for k, v in config.get("added_tokens_decoder", {}).items()}


def _bundled_added_tokens() -> dict[int, str]:
    data = json.loads((BUNDLED_TOKENIZER_DIR / "added_tokens.json").read_text(encoding="utf-8"))
    return {int(t["id"]): t["content"] for t in data["added_tokens"]}


@functools.lru_cache(maxsize=1)
def bundled_tokenizer() -> Qwen3VLTokenizer:
    """The Qwen3-VL tokenizer shipped inside the pack (see qwen3vl_tokenizer/README.md)."""
    bpe = _bpe_from_vocab_and_merges(
        BUNDLED_TOKENIZER_DIR / "vocab.json", BUNDLED_TOKENIZER_DIR / "merges.txt"
    )
    return Qwen3VLTokenizer(bpe, _bundled_added_tokens(), "the bundled Qwen3-VL tokenizer")


def load_tokenizer_folder(folder: str | Path) -> Qwen3VLTokenizer:
    """Tokenizer from a Hugging Face tokenizer folder (tokenizer.json, or vocab.json + merges.txt)."""
    folder = Path(folder)
    tokenizer_json = folder / "tokenizer.json"
    config_json = folder / "tokenizer_config.json"
    try:
        if tokenizer_json.is_file():
            bpe, added = _bpe_from_tokenizer_json(tokenizer_json)
        elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            bpe = _bpe_from_vocab_and_merges(folder / "vocab.json", folder / "merges.txt")
            added = {}
        else:
            raise TokenizerFilesError(
                f"{folder} holds no tokenizer: expected tokenizer.json, or vocab.json and merges.txt"
            )
        if config_json.is_file():
            added = {**_added_tokens_from_config(config_json), **added}
    except Exception as exc:  # the tokenizers library raises plain Exception on bad JSON
        if isinstance(exc, TokenizerFilesError):
            raise
        raise TokenizerFilesError(f"cannot read the tokenizer in {folder}: {exc}") from exc
    if not added:
        added = _bundled_added_tokens()
    tokenizer = Qwen3VLTokenizer(bpe, added, str(folder))
    for content in (IM_START, IM_END):
        tokenizer._id_of(content)  # raises a clear error when the chat tokens are missing
    return tokenizer


def find_tokenizer_folder(model_path: str | Path) -> Path | None:
    """Where a model folder keeps its tokenizer: itself, `tokenizer/` inside, or a `tokenizer/`
    sibling (the diffusers / official Ideogram layout `text_encoder/` + `tokenizer/`)."""
    model_path = Path(model_path)
    if not model_path.is_dir():
        return None
    for candidate in (model_path, model_path / "tokenizer", model_path.parent / "tokenizer"):
        if (candidate / "tokenizer.json").is_file() or (candidate / "vocab.json").is_file():
            return candidate
    return None


def count_caption_tokens(caption: str, tokenizer: Qwen3VLTokenizer | None = None) -> int:
    """Token count of a caption after framing; cheap (tokenizes only), for caption tools.

    Compare with `MAX_TEXT_TOKENS` (2048). Uses the bundled tokenizer unless one is given; every
    published Ideogram 4 text encoder uses the same Qwen3-VL vocabulary.
    """
    return (tokenizer or bundled_tokenizer()).count_tokens(caption)
