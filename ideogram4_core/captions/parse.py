"""Raw caption text -> Python object, tolerant of what other tools and LLMs emit.

Everything here is linear in the input and bounded before `json.loads` runs: oversized text and
deep nesting are refused up front, so a hostile or broken caption cannot cost memory or recursion.
Text-level fixes (markdown fences, trailing commas, a BOM) are reported as issues; whether they
count as repaired is the caller's decision (repair mode only).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from .issues import CaptionError, Issue, line_column

MAX_CAPTION_BYTES = 256 * 1024
# A valid caption nests 5 deep (root, composition, elements, element, bbox); 32 leaves headroom
# for foreign wrappers while staying far below Python's recursion limit.
MAX_NESTING = 32

# Same rule as the official verifier: a \uXXXX escape for a non-ASCII code point.
NON_ASCII_ESCAPE = re.compile(r"\\u(?:00[89a-fA-F][0-9a-fA-F]|0[1-9a-fA-F][0-9a-fA-F]{2}|[1-9a-fA-F][0-9a-fA-F]{3})")
# One fenced block: ```json ... ``` (the closing fence may be missing if an LLM was cut off).
_FENCE = re.compile(r"```[^\n`]*\n(.*?)(?:```|\Z)", re.S)
# Strings (possibly unterminated) or structural characters; the alternatives are disjoint, so
# scanning is linear even on adversarial input.
_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"?|[{}\[\],]')


class DuplicateKeyDict(dict):
    """A JSON object that had repeated keys; json.loads would silently keep only the last."""

    duplicate_keys: tuple[str, ...] = ()


@dataclass
class ParsedText:
    value: Any = None  # the parsed JSON value; None when unparsable or plain text
    plain_text: str | None = None  # set when the input is prose, not JSON
    issues: list[Issue] = field(default_factory=list)
    parsed: bool = False
    bom: Issue | None = None  # set (and also in `issues`) when the text began with a byte-order mark


def refuse_oversized(text: str) -> None:
    # len(text) <= bytes, so the cheap check goes first; encoding is bounded by it.
    if len(text) > MAX_CAPTION_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_CAPTION_BYTES:
        raise CaptionError([Issue("$", f"caption is larger than {MAX_CAPTION_BYTES // 1024} KB.",
                                  "a real caption is a few KB; check that the right text is connected.")])


def refuse_unbounded(text: str) -> None:
    """The cheap checks alone (size, then nesting depth on a linear token scan), for refusing a
    caption when a prompt is queued, before anything is parsed. Raises CaptionError."""
    refuse_oversized(text)
    _scan(text, 0, len(text))


def _pairs_hook(pairs: list[tuple[str, Any]]) -> dict:
    obj = DuplicateKeyDict(pairs)
    if len(obj) != len(pairs):
        seen, dups = set(), []
        for key, _ in pairs:
            if key in seen and key not in dups:
                dups.append(key)
            seen.add(key)
        obj.duplicate_keys = tuple(dups)
    return obj


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _strip_fences(text: str) -> tuple[int, int, list[Issue]]:
    """(start, end) of the caption inside `text`, after removing one markdown fence."""
    if "```" not in text:
        return 0, len(text), []
    match = _FENCE.search(text)
    if match is None:
        return 0, len(text), []
    line, col = line_column(text, match.start())
    extra = " and the text around it" if text[:match.start()].strip() or text[match.end():].strip() else ""
    fix = f"remove the ``` fence lines{extra} (repair mode does this)."
    return match.start(1), match.end(1), [Issue("$", "caption is wrapped in a markdown ``` fence.",
                                                 fix, line=line, column=col)]


def _scan(text: str, start: int, end: int) -> tuple[list[int], list[Issue]]:
    """Trailing-comma offsets; refuses nesting deeper than MAX_NESTING before anything is built."""
    depth, last_comma, commas = 0, -1, []
    for tok in _TOKENS.finditer(text, start, end):
        ch = tok.group()[0]
        if ch in "{[":
            depth += 1
            if depth > MAX_NESTING:
                line, col = line_column(text, tok.start())
                raise CaptionError([Issue("$", f"JSON is nested more than {MAX_NESTING} levels deep.",
                                          "a caption nests 5 levels; this is not a caption.", line=line, column=col)])
        elif ch in "}]":
            depth -= 1
            if last_comma >= 0 and not text[last_comma + 1:tok.start()].strip():
                commas.append(last_comma)
        last_comma = tok.start() if ch == "," else -1
    issues = []
    for pos in commas:
        line, col = line_column(text, pos)
        issues.append(Issue("$", "trailing comma before a closing bracket (not valid JSON).",
                            "remove the comma (repair mode does this).", line=line, column=col))
    return commas, issues


def _decode_hint(msg: str, at_end: bool) -> str:
    if at_end:
        return "the caption looks cut off (an LLM may have hit its token limit); complete or regenerate it."
    hints = {
        "Expecting property name": 'keys need double quotes ("desc", not \'desc\').',
        "Expecting ',' delimiter": "a comma is missing between two items, or a quote inside a string is not escaped (\\\").",
        "Expecting ':' delimiter": 'each key needs a colon: "key": value.',
        "Invalid control character": "write line breaks inside strings as \\n.",
        "Extra data": "remove the text after the JSON object (only one object is allowed).",
        "Invalid \\escape": 'only \\" \\\\ \\/ \\b \\f \\n \\r \\t and \\uXXXX escapes are allowed.',
        "Unterminated string": "close the string with a double quote; if the caption stops there, it was cut off "
                               "(an LLM may have hit its token limit).",
    }
    for prefix, hint in hints.items():
        if msg.startswith(prefix):
            return hint
    return "fix the JSON syntax at this position (strings need double quotes; no comments, NaN or single quotes)."


def _escape_warning(body: str) -> list[Issue]:
    matches = NON_ASCII_ESCAPE.findall(body)
    if not matches or not body.isascii():
        return []  # official rule: escapes next to literal non-ASCII are assumed intentional
    examples = ", ".join(sorted(set(matches))[:3])
    return [Issue("$", f"{len(matches)} \\uXXXX escape(s) for non-ASCII characters (e.g. {examples}) and no "
                       "literal non-ASCII text: written with ensure_ascii=True; the model saw literal UTF-8.",
                  "serialise with ensure_ascii=False; canonical output writes these characters literally.",
                  severity="warning")]


def parse_caption_text(text: str) -> ParsedText:
    """Parse raw caption text. Raises CaptionError only for input that must be refused outright."""
    refuse_oversized(text)
    result = ParsedText()
    if text.startswith("\ufeff"):
        text = " " + text[1:]  # keep offsets; a BOM is not JSON whitespace
        result.bom = Issue("$", "text starts with a byte-order mark.", "remove it (done automatically).", severity="info")
        result.issues.append(result.bom)
    start, end, fence_issues = _strip_fences(text)
    result.issues += fence_issues
    body = text[start:end]
    stripped = body.strip()
    if not stripped:
        result.issues.append(Issue("$", "caption is empty.", "write a caption, or connect the caption builder."))
        return result
    if stripped[0] not in "{[\"":
        result.plain_text = stripped
        return result
    commas, comma_issues = _scan(text, start, end)
    result.issues += comma_issues
    if commas:
        chars = list(text)
        for pos in commas:
            chars[pos] = " "  # same length, so parse-error positions still match the original
        body = "".join(chars)[start:end]
    try:
        result.value = json.loads(body, object_pairs_hook=_pairs_hook, parse_constant=_reject_constant)
        result.parsed = True
    except json.JSONDecodeError as exc:
        if stripped[0] == '"':  # e.g. '"SALE" painted on a wall' is prose that starts with a quote
            result.plain_text = stripped
            return result
        line, col = line_column(text, start + exc.pos)
        at_end = not body[exc.pos:].strip()
        result.issues.append(Issue("$", f"invalid JSON: {exc.msg}.", _decode_hint(exc.msg, at_end), line=line, column=col))
        return result
    except (ValueError, RecursionError) as exc:  # NaN/Infinity, integers too long to convert
        result.issues.append(Issue("$", f"invalid JSON: {exc}.", "use plain JSON numbers and strings."))
        return result
    result.issues += _escape_warning(body)
    return result
