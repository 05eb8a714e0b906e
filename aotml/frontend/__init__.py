"""Frontend: .mlg text to an AST whose every node carries a source span."""

from aotml.frontend.parser import parse, parse_file

__all__ = ["parse", "parse_file"]
