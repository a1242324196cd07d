"""Verify a caption before it reaches the model: the entry point a caption node calls.

    result = verify_caption(text_or_dict, mode="repair", plain_text="wrap", caption_format="as_written")
    result.caption   # the text to encode
    result.issues    # every problem: path, message, fix, severity, repaired
    format_issues(result.issues)

Modes:
- "strict": refuse (raise CaptionError listing every problem) unless the caption already follows
  the schema.
- "repair" (default): apply only safe repairs (key order, uppercase hex, bbox clamping and
  min/max swaps, integral floats, dropping keys the model never saw such as `aspect_ratio`,
  markdown fences, trailing commas), report each one, then refuse whatever is still wrong.
- "warn": never refuse; report everything and pass the text through exactly as given.

What reaches the text encoder is set by `caption_format`:
- "as_written" (default): a caption that needs no repair is encoded byte for byte as given. Both
  references do this: diffusers tokenizes the string it is handed, and the official pipeline
  verifies the string, then tokenizes that same string. Pretty-printed and compact JSON are
  different token sequences, hence different images, so re-serialising a valid caption would
  leave both references. Only when repair mode changed something is the repaired caption
  re-serialised (compactly), and a report line says so. A leading byte-order mark, which is not
  JSON, is dropped without re-serialising.
- "compact": always re-serialise to the compact canonical form (`serialize_caption`), the form
  the official magic prompt emits and its prompting guide asks for. An explicit choice only.
Warn mode never changes the text, whatever `caption_format` says (the report notes it).

Captions over 256 KB, JSON nested too deeply, and objects that are not JSON are refused in every
mode: there is no caption to pass on.

Plain text (prose, not JSON) is handled by `plain_text`, in every mode:
- "wrap" (default): wrap it into the minimal valid caption, the text becoming the
  `high_level_description`. Ideogram 4 was trained only on JSON captions; its authors report
  more safety-filter false positives ("Image blocked" grey cards) for non-JSON prompts, and the
  official pipeline refuses plain text by default. Wrapping keeps the user's words verbatim and
  puts them where the model expects a free-text summary, so a casual prompt still lands on the
  training distribution. It is reported as a warning, so nobody is surprised by it.
- "pass": hand the text to the model unchanged, with a warning (for experiments).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from .build import serialize_caption, wrap_plain_text
from .check import check_caption, encoding_issues
from .issues import CaptionError, Issue, format_issues
from .parse import parse_caption_text
from .repair import repair_caption

MODES = ("strict", "repair", "warn")
PLAIN_TEXT_CHOICES = ("wrap", "pass")
CAPTION_FORMATS = ("as_written", "compact")
DEFAULT_MODE = "repair"
DEFAULT_PLAIN_TEXT = "wrap"
DEFAULT_CAPTION_FORMAT = "as_written"

_PLAIN_TEXT_WHY = ("Ideogram 4 was trained only on JSON captions; plain text gives weaker images and more "
                   "safety-filter false positives.")


@dataclass
class CaptionResult:
    caption: str  # the text to feed the text encoder
    issues: list[Issue] = field(default_factory=list)
    data: dict | None = None  # the parsed caption (after repairs in repair mode), e.g. for a preview

    @property
    def ok(self) -> bool:
        """True when no unrepaired error remains (always the case unless mode is "warn")."""
        return not any(issue.blocking for issue in self.issues)

    def report(self) -> str:
        return format_issues(self.issues)


def _mapping_text(caption: Mapping) -> str:
    # Round-trip through JSON text: one code path for dicts and strings, tuples become lists,
    # the input object is never touched, and cycles or non-JSON values are caught here.
    try:
        return serialize_caption(caption)
    except (TypeError, ValueError, RecursionError) as exc:
        raise CaptionError([Issue("$", f"the caption object is not plain JSON data ({exc}).",
                                  "use only dicts with string keys, lists, strings, ints and finite floats.")]) from None


def _dedupe(issues: list[Issue]) -> list[Issue]:
    seen, out = set(), []
    for issue in issues:
        key = (issue.path, issue.message, issue.repaired)
        if key not in seen:
            seen.add(key)
            out.append(issue)
    return out


def _warn_format_note(raw: str, obj: Any, parsed, caption_format: str) -> list[Issue]:
    # warn mode never changes the text; say so rather than ignore an explicit "compact".
    if caption_format != "compact" or not parsed.parsed or serialize_caption(obj) == raw.strip():
        return []
    return [Issue("$", "caption_format 'compact' does not apply in warn mode, which passes the text as written.",
                  "use caption_check 'repair' or 'strict' to have it re-serialised compactly.", severity="info")]


def _encoded_text(raw: str, obj: Any, parsed, needs_rewrite: bool, caption_format: str) -> tuple[str, list[Issue]]:
    """The text for the text encoder, plus a report line when it is not the caption as written."""
    if parsed.plain_text is not None:  # wrapped: there is no JSON text as written
        return serialize_caption(obj), []
    if caption_format == "compact":
        text = serialize_caption(obj)
        if text == raw.strip():
            return text, []
        return text, [Issue("$", "caption was not in compact canonical form (whitespace, escapes or repairs).",
                            "re-serialised with ensure_ascii=False and separators (',', ':'), as "
                            "caption_format 'compact' asks.", severity="info", repaired=True)]
    if not needs_rewrite:
        return (raw[1:] if parsed.bom else raw), []  # byte for byte, less a BOM (not JSON)
    return serialize_caption(obj), [Issue(
        "$", "repairs changed the caption, so the repaired caption is encoded, not the text as written.",
        "re-serialised it compactly (ensure_ascii=False, separators (',', ':')); apply the repairs at the "
        "source to have your own text encoded as written.", severity="info", repaired=True)]


def verify_caption(caption: str | Mapping, mode: str = DEFAULT_MODE, plain_text: str = DEFAULT_PLAIN_TEXT,
                   caption_format: str = DEFAULT_CAPTION_FORMAT) -> CaptionResult:
    """Check (and in repair mode fix) a caption. Raises CaptionError when refusing it."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if plain_text not in PLAIN_TEXT_CHOICES:
        raise ValueError(f"plain_text must be one of {PLAIN_TEXT_CHOICES}, got {plain_text!r}")
    if caption_format not in CAPTION_FORMATS:
        raise ValueError(f"caption_format must be one of {CAPTION_FORMATS}, got {caption_format!r}")
    if isinstance(caption, Mapping):
        raw = _mapping_text(caption)
    elif isinstance(caption, str):
        raw = caption
    else:
        raise CaptionError([Issue("$", f"expected caption text or a caption object, got {type(caption).__name__}.",
                                  "connect a STRING caption or a caption dict.")])

    parsed = parse_caption_text(raw)
    issues = list(parsed.issues)
    obj: Any = parsed.value
    if parsed.plain_text is not None:
        if plain_text == "pass":
            issues.append(Issue("$", "caption is plain text, not a JSON caption; passed through unchanged.",
                                f"{_PLAIN_TEXT_WHY} Use plain_text='wrap' or the caption builder.", severity="warning"))
            return CaptionResult(raw, issues)
        obj = wrap_plain_text(parsed.plain_text)
        issues.append(Issue("$", "caption is plain text, not a JSON caption.",
                            f"wrapped it as the high_level_description of a minimal caption. {_PLAIN_TEXT_WHY}",
                            severity="warning", repaired=True))
    elif not parsed.parsed:
        if mode == "warn":
            return CaptionResult(raw, issues)
        raise CaptionError(issues)

    # Which findings does the encoded text fix? Repair mode fixes every text-level one (fences,
    # trailing commas, BOM, \uXXXX escapes); strict mode drops a BOM, which is not JSON, and fixes
    # the other non-error ones (the escapes) only by a compact re-serialisation.
    text_fixes = [i for i in parsed.issues if i is not parsed.bom]
    if mode == "repair":
        issues = [i.as_repaired() for i in issues]
    elif mode == "strict":
        issues = [i.as_repaired() if i is parsed.bom or (caption_format == "compact" and i.severity != "error")
                  else i for i in issues]
    repairs: list[Issue] = []
    if mode == "repair":
        duplicates = encoding_issues(obj)  # repair rebuilds dicts, which forgets duplicate keys
        obj, repairs = repair_caption(obj)
        issues += duplicates + repairs
    issues = _dedupe(issues + check_caption(obj))

    data = obj if isinstance(obj, dict) else None
    if mode == "warn":  # pass through; only an explicit plain_text="wrap" changes the text
        issues += _warn_format_note(raw, obj, parsed, caption_format)
        return CaptionResult(raw if parsed.plain_text is None else serialize_caption(obj), issues, data)
    if any(issue.blocking for issue in issues):
        raise CaptionError(issues)
    needs_rewrite = mode == "repair" and bool(repairs or text_fixes)
    text, notes = _encoded_text(raw, obj, parsed, needs_rewrite, caption_format)
    return CaptionResult(text, issues + notes, data)
