"""Verify a caption before it reaches the model: the entry point a caption node calls.

    result = verify_caption(text_or_dict, mode="repair", plain_text="wrap")
    result.caption   # the text to encode
    result.issues    # every problem: path, message, fix, severity, repaired
    format_issues(result.issues)

Modes:
- "strict": refuse (raise CaptionError listing every problem) unless the caption already follows
  the schema. The accepted caption is re-serialised compactly, which changes whitespace only.
- "repair" (default): apply only safe repairs (key order, uppercase hex, bbox clamping and
  min/max swaps, integral floats, dropping keys the model never saw such as `aspect_ratio`,
  markdown fences, trailing commas), report each one, then refuse whatever is still wrong.
- "warn": never refuse; report everything and pass the text through exactly as given.

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
DEFAULT_MODE = "repair"
DEFAULT_PLAIN_TEXT = "wrap"

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


def verify_caption(caption: str | Mapping, mode: str = DEFAULT_MODE,
                   plain_text: str = DEFAULT_PLAIN_TEXT) -> CaptionResult:
    """Check (and in repair mode fix) a caption. Raises CaptionError when refusing it."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if plain_text not in PLAIN_TEXT_CHOICES:
        raise ValueError(f"plain_text must be one of {PLAIN_TEXT_CHOICES}, got {plain_text!r}")
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

    # Non-error text issues (BOM, \uXXXX escapes) vanish when strict/repair re-serialise.
    if mode != "warn":
        issues = [i.as_repaired() if mode == "repair" or i.severity != "error" else i for i in issues]
    if mode == "repair":
        duplicates = encoding_issues(obj)  # repair rebuilds dicts, which forgets duplicate keys
        obj, repairs = repair_caption(obj)
        issues += duplicates + repairs
    issues = _dedupe(issues + check_caption(obj))

    data = obj if isinstance(obj, dict) else None
    if mode == "warn":  # pass through; only an explicit plain_text="wrap" changes the text
        return CaptionResult(raw if parsed.plain_text is None else serialize_caption(obj), issues, data)
    if any(issue.blocking for issue in issues):
        raise CaptionError(issues)
    text = serialize_caption(obj)
    if parsed.plain_text is None and text != raw.strip():
        issues.append(Issue("$", "caption was not in compact canonical form (whitespace, escapes or repairs).",
                            "re-serialised with ensure_ascii=False and separators (',', ':'), "
                            "as the official pipeline does.", severity="info", repaired=True))
    return CaptionResult(text, issues, data)
