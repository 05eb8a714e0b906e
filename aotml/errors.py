"""User errors with source locations, and internal errors.

A *user error* is bad input: it carries a span into the user's source and prints as
``file:line:col: error: message``, the source line, and a caret. An *internal error* is a broken
invariant inside the compiler: it says so and asks for a report.
"""

from __future__ import annotations

import contextlib
import difflib
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SourceFile:
    """The text of one source file, kept so diagnostics can quote lines."""

    path: str
    text: str

    def line(self, number: int) -> str:
        # Lines end at "\n" only, as the parser counts them (str.splitlines would also break at
        # form feeds, vertical tabs and other separators, and quote the wrong line).
        lines = self.text.split("\n")
        return lines[number - 1].rstrip("\r") if 0 < number <= len(lines) else ""


@dataclass(frozen=True)
class Span:
    """A region of a source file: 1-based line and column of its start and end."""

    source: SourceFile = field(repr=False, compare=False)
    line: int
    col: int
    end_line: int
    end_col: int

    def __str__(self) -> str:
        return f"{self.source.path}:{self.line}:{self.col}"


class AotmlError(Exception):
    """Base class of every error aotml raises on purpose."""


class CompileError(AotmlError):
    """A user error located in the source (or, without a span, in a named file)."""

    def __init__(self, message: str, span: Span | None = None, hint: str | None = None,
                 notes: Iterable[str] = ()):
        super().__init__(message)
        self.message = message
        self.span = span
        self.hint = hint
        self.notes = tuple(notes)

    def format(self) -> str:
        if self.span is None:
            head = f"error: {self.message}"
            body: list[str] = []
        else:
            s = self.span
            head = f"{s}: error: {self.message}"
            text, col = _window(s.source.line(s.line), s.col - 1)
            width = (s.end_col - s.col) if s.end_line == s.line and s.end_col > s.col else 1
            width = max(1, min(width, len(text) - col))
            body = [f"    {text}", "    " + _caret_pad(text, col) + "^" + "~" * (width - 1)]
        tail = [f"note: {n}" for n in self.notes]
        if self.hint:
            tail.append(f"hint: {self.hint}")
        return "\n".join([head, *body, *tail])

    def __str__(self) -> str:
        return self.format()


def _window(text: str, col: int, width: int = 100) -> tuple[str, int]:
    """At most `width` characters of a long line around 0-based `col`, and col within them."""
    if len(text) <= width:
        return text, col
    start = max(0, min(col - width // 2, len(text) - width))
    piece = text[start:start + width]
    if start > 0:
        piece, col = "..." + piece[3:], col - start
    else:
        col = col - start
    if start + width < len(text):
        piece = piece[:-3] + "..."
    return piece, col


def _caret_pad(text: str, n: int) -> str:
    # keep tabs so the caret lines up under tab-indented source
    return "".join(c if c == "\t" else " " for c in text[:n]).ljust(n)


class InternalError(AotmlError):
    """A compiler bug: an invariant the compiler itself should have kept."""

    def __init__(self, message: str):
        super().__init__(
            f"internal compiler error: {message}\n"
            "This is a bug in aotml; please report it with the input that caused it.")


class RunError(AotmlError):
    """A model was called with bad arguments, or failed at run time."""


class LoadError(AotmlError):
    """A compiled artifact could not be loaded."""


def did_you_mean(name: str, candidates: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


# Long left-nested expressions (a 500-term sum) recurse once per term in the parser's tree
# transform and in elaboration; allow that, and turn anything deeper into a user error.
_RECURSION_LIMIT = 20000


@contextlib.contextmanager
def deep_recursion(span: Span | None):
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, _RECURSION_LIMIT))
    try:
        yield
    except RecursionError:
        raise CompileError("expression is nested too deeply to compile", span,
                           hint="split it into several bindings") from None
    finally:
        sys.setrecursionlimit(old)
