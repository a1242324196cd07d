"""Issue records shared by the caption parser, repairer and verifier."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Sequence

# error:   breaks the schema the model was trained on (the official verifier flags it) or cannot be
#          read at all; strict and repair modes refuse a caption with an unrepaired error.
# warning: allowed, but likely to cost quality (plain text, \uXXXX escapes, no summary, ...).
# info:    a change that means nothing to the model's input distribution (whitespace only).
SEVERITIES = ("error", "warning", "info")


@dataclass(frozen=True)
class Issue:
    """One problem in a caption: where it is, what is wrong, and how to fix it."""

    path: str  # JSON path such as "$.compositional_deconstruction.elements[0].bbox"
    message: str
    fix: str
    severity: str = "error"
    repaired: bool = False  # True when repair mode (or plain-text wrapping) already fixed it
    line: int | None = None  # 1-based position in the raw text, for text-level problems
    column: int | None = None

    @property
    def blocking(self) -> bool:
        return self.severity == "error" and not self.repaired

    def as_repaired(self) -> "Issue":
        return replace(self, repaired=True)


class CaptionError(ValueError):
    """A caption was refused. `issues` holds every problem found, not just the first."""

    def __init__(self, issues: Sequence[Issue], headline: str = "caption refused"):
        self.issues = list(issues)
        super().__init__(f"{headline}:\n{format_issues(self.issues)}")


def json_path(parts: Iterable[str | int]) -> str:
    out = "$"
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def format_issues(issues: Sequence[Issue]) -> str:
    """One line per issue, readable in a node's text output or an exception message."""
    if not issues:
        return "no issues"
    lines = []
    for issue in issues:
        where = issue.path
        if issue.line is not None:
            where += f" (line {issue.line}, column {issue.column})"
        status = "repaired" if issue.repaired else issue.severity
        lines.append(f"[{status}] {where}: {issue.message} Fix: {issue.fix}")
    return "\n".join(lines)


def line_column(text: str, pos: int) -> tuple[int, int]:
    """1-based line and column of character offset `pos` in `text`."""
    pos = max(0, min(pos, len(text)))
    line = text.count("\n", 0, pos) + 1
    column = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return line, column
