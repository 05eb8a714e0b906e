"""Render docs/ops.md from the registry, so the op table cannot drift from the code.

    python -m aotml.ops.doc > docs/ops.md
"""

from __future__ import annotations

from aotml.ops.registry import REGISTRY


def _attr(a) -> str:
    return a.name + ("" if a.required else f"={str(a.default).lower()}") + f": {a.kind}"


def render() -> str:
    lines = [
        "# Ops",
        "",
        "Generated from the op registry by `python -m aotml.ops.doc > docs/ops.md`; a test",
        "fails when this file and the registry disagree. Operands of an op share one dtype",
        "and the dtype rules are in language.md; elementwise binary ops broadcast like numpy.",
        "",
        "| op | kind | signature | attributes | description |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in sorted(REGISTRY):
        op = REGISTRY[name]
        attrs = ", ".join(_attr(a) for a in op.attrs) or "—"
        lines.append(f"| `{name}` | {op.kind} | `{op.signature}` | {attrs} | {op.doc} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(), end="")
