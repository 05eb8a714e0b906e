"""Algebraic simplification: peephole rewrites, kept as data in `RULES`, run to a fixpoint.

`RULES` maps an op name to its rules; a rule is a function `(node, context) -> Value | None`
that returns a value computing the same tensor as the node (an existing value, or one it makes
with `context.make`), or None where it does not apply. The node's uses and the outputs naming it
are then rewritten to that value and the node is dropped. The rules:

    x * 1, 1 * x, x + 0, 0 + x, x - 0, x / 1      -> x
    neg(neg(x))                                   -> x
    transpose(transpose(x, perm=p), perm=q)       -> transpose(x, perm=(p[q[0]], p[q[1]], ...)),
                                                     or x where that is the identity
    reshape(reshape(x, ...), shape=s)             -> reshape(x, shape=s)
    reshape(x) to x's own shape, cast(x) to x's own dtype -> x

A constant is "1" or "0" only if it is a parameter every element of which is exactly that value
in its stored dtype (so `x * 1.0000001` stays in f32, where the literal is not 1, and goes in
f16, where it is), and only if the rewrite keeps the result's type: `x * ones` where `ones`
broadcasts x to a bigger shape stays. `x + 0` (and `0 + x`) is x only up to the sign of a zero:
-0.0 + 0 is +0.0, equal under comparison but not bit for bit. It is the one rule that is not
exact (LLVM applies it only under its no-signed-zeros flag); it is kept because the two zeros
compare equal. `copy` is never removed: `materialize_outputs` inserts copies on purpose.

Assumes a verified graph. Guarantees: the graph computes the same outputs (up to the sign of a
zero, above); nodes stay in topological order and every new node's type is inferred by its op's
rule. Nodes made dead (the inner transpose of a pair, say) are left for `eliminate_dead_code`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from aotml import ops
from aotml.errors import InternalError
from aotml.graph.ir import Graph, Node, Value


class Context:
    """What a rule may ask about the graph being rewritten, and how it makes a new node."""

    def __init__(self, graph: Graph, nodes: list[Node]):
        self._params = {p.value.uid: p for p in graph.params}
        self._producers: dict[int, Node] = {}
        self._nodes = nodes  # the rewritten graph's node list, which `make` appends to

    def producer(self, v: Value) -> Node | None:
        """The node that computes `v`, or None for an input or a parameter."""
        return self._producers.get(v.uid)

    def splat(self, v: Value) -> Any:
        """The value every element of a parameter holds, or None (not a parameter, or its
        elements differ)."""
        p = self._params.get(v.uid)
        if p is None or p.data.size == 0:
            return None
        first = p.data.flat[0]
        return first.item() if np.all(p.data == first) else None

    def make(self, op: str, inputs: tuple[Value, ...], attrs: Mapping[str, Any],
             like: Node) -> Value:
        """Append a new node (typed by its op's rule; the name and span of `like`)."""
        definition = ops.REGISTRY[op]
        bound = definition.bind_attrs(dict(attrs))
        result = Value(like.result.name, definition.infer(tuple(v.type for v in inputs), bound))
        node = Node(op, inputs, tuple(sorted(bound.items())), result, like.span)
        self.add(node)
        return result

    def add(self, node: Node) -> None:
        self._nodes.append(node)
        self._producers[node.result.uid] = node


Rule = Callable[[Node, Context], Value | None]


def _unit(operand: int, unit: int) -> Rule:
    """op(a, b) is the other operand when operand `operand` is all `unit` and the result keeps
    the other operand's type."""

    def rule(node: Node, ctx: Context) -> Value | None:
        other = node.inputs[1 - operand]
        if ctx.splat(node.inputs[operand]) == unit and node.result.type == other.type:
            return other
        return None

    rule.__name__ = f"_unit_{operand}_{unit}"
    return rule


def _double_neg(node: Node, ctx: Context) -> Value | None:
    inner = ctx.producer(node.inputs[0])
    return inner.inputs[0] if inner is not None and inner.op == "neg" else None


def _perm(node: Node) -> tuple[int, ...]:
    """A transpose's permutation: its `perm` attribute, or reversed axes where that is empty."""
    rank = node.inputs[0].type.rank
    perm = node.attr.get("perm") or tuple(reversed(range(rank)))
    return tuple(p % rank for p in perm) if rank else ()


def _transpose_of_transpose(node: Node, ctx: Context) -> Value | None:
    inner = ctx.producer(node.inputs[0])
    if inner is None or inner.op != "transpose":
        return None
    # y = transpose(x, p) has y.shape[i] == x.shape[p[i]]; so z = transpose(y, q) takes axis
    # i of z from axis p[q[i]] of x
    p, q = _perm(inner), _perm(node)
    composed = tuple(p[i] for i in q)
    x = inner.inputs[0]
    if composed == tuple(range(len(composed))):
        return x
    return ctx.make("transpose", (x,), {**node.attr, "perm": composed}, like=node)


def _reshape_of_reshape(node: Node, ctx: Context) -> Value | None:
    inner = ctx.producer(node.inputs[0])
    if inner is None or inner.op != "reshape":
        return None
    x = inner.inputs[0]
    if x.type == node.result.type:
        return x
    return ctx.make("reshape", (x,), node.attr, like=node)


def _same_type(node: Node, ctx: Context) -> Value | None:
    """reshape to x's own shape, cast to x's own dtype: x itself."""
    x = node.inputs[0]
    return x if x.type == node.result.type else None


RULES: dict[str, tuple[Rule, ...]] = {
    "mul": (_unit(1, 1), _unit(0, 1)),
    "add": (_unit(1, 0), _unit(0, 0)),
    "sub": (_unit(1, 0),),
    "div": (_unit(1, 1),),
    "neg": (_double_neg,),
    "transpose": (_transpose_of_transpose,),
    "reshape": (_same_type, _reshape_of_reshape),
    "cast": (_same_type,),
}

# Each rewrite drops a node, and a rule that makes one (the transpose and reshape pairs) makes
# it read further up the chain, so a few sweeps reach the fixpoint; hitting this bound means a
# new rule undoes another.
_MAX_SWEEPS = 100


def simplify(graph: Graph, rules: Mapping[str, tuple[Rule, ...]] = RULES) -> Graph:
    for _ in range(_MAX_SWEEPS):
        graph, changed = _sweep(graph, rules)
        if not changed:
            return graph
    raise InternalError(f"simplify: no fixpoint after {_MAX_SWEEPS} sweeps; rules loop")


def _sweep(graph: Graph, rules: Mapping[str, tuple[Rule, ...]]) -> tuple[Graph, bool]:
    """One pass over the nodes in order, each rewritten with its inputs' replacements first."""
    nodes: list[Node] = []
    ctx = Context(graph, nodes)
    same: dict[int, Value] = {}  # uid of a dropped node's result -> the value replacing it

    def resolve(v: Value) -> Value:
        return same.get(v.uid, v)

    for node in graph.nodes:
        inputs = tuple(resolve(v) for v in node.inputs)
        if inputs != node.inputs:
            node = replace(node, inputs=inputs)
        for rule in rules.get(node.op, ()):
            value = rule(node, ctx)
            if value is not None and value is not node.result:
                same[node.result.uid] = value
                break
        else:
            ctx.add(node)
    outputs = [(name, resolve(v)) for name, v in graph.outputs]
    return replace(graph, nodes=nodes, outputs=outputs), bool(same)
