"""ONNX graph -> aotml graph IR, node by node, through the op registry.

Every ONNX value becomes either a graph value (an input, a param or a node result, typed by the
registry's own shape rule) or a constant known at import time (initializers, `Constant` nodes,
and small shape computations on them, folded with ONNX's reference evaluator). Inputs that
carry shapes or indices (Reshape's shape, Slice's starts/ends/axes/steps, reduction axes, Pad's
pads, Split's sizes...) must be such constants; they become the registry op's attributes.
Dynamic dims of the graph's inputs become symbolic dims, named by their `dim_param`.

An op with no converter is collected, not raised: the error lists every unsupported op type
with the names of its nodes. Any other problem names the node at fault.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aotml import ops
from aotml.graph.ir import Graph, Node, Param, TensorType, Value
from aotml.graph.symbolic import Sym, SymbolicError, symbol
from aotml.graph.to_source import legal_name
from aotml.onnx_import.reader import (
    DEFAULT_MAX_BYTES,
    MAX_RANK,
    OnnxImportError,
    dtype_name,
    onnx_dtypes,
    read_model,
    require_onnx,
    tensor_to_array,
)

MIN_OPSET = 13
# older definitions the converters also implement: op -> the oldest (since_version)
_OLDER_DEFINITIONS = {"Dropout": 10}  # Dropout-10: the ratio an attribute, unused at inference
FOLD_MAX_ELEMENTS = 1 << 20  # the largest constant a shape computation may fold to


@dataclass
class _T:
    """An ONNX value during import: a graph value, or a constant."""

    value: Value | None = None
    const: np.ndarray | None = None

    @property
    def type(self) -> TensorType:
        return self.value.type


def import_onnx(path: str | Path, max_bytes: int = DEFAULT_MAX_BYTES,
                name: str | None = None) -> Graph:
    """The graph of an ONNX file (before any pass)."""
    path = Path(path)
    model = read_model(path, max_bytes)
    return _Importer(model, path.parent, max_bytes, name or path.stem).run()


class _Importer:
    def __init__(self, model, folder: Path, max_bytes: int, name: str):
        self.onnx = require_onnx()
        self.model, self.folder = model, folder
        self.budget = [max_bytes]
        self.max_bytes = max_bytes
        self.taken: set[str] = set()
        self.graph = Graph(legal_name(name, set(), "model"), [], [], [], [])
        self.env: dict[str, _T] = {}
        self.params: dict[int, Value] = {}  # id(constant array) -> its param
        self._symbols: dict[str, str] = {}  # an ONNX dim_param -> its symbol's name
        self._keep: list[np.ndarray] = []
        opsets = {o.domain: o.version for o in model.opset_import}
        self.opset = opsets.get("", opsets.get("ai.onnx", 0))
        if self.opset < MIN_OPSET and not self._same_since_min_opset(model.graph.node):
            raise OnnxImportError(f"the model uses ONNX opset {self.opset}; aotml imports "
                                  f"opset {MIN_OPSET} and newer",
                                  hint="convert it with onnx.version_converter.convert_version"
                                       f"(model, {MIN_OPSET})")

    def _same_since_min_opset(self, nodes) -> bool:
        """Whether every node's op means at the model's older opset what it means at
        MIN_OPSET (one definition in force at both, as Not-1 or And-7): the converters
        implement the ops from MIN_OPSET on."""
        defs = self.onnx.defs
        for n in nodes:
            if n.domain not in ("", "ai.onnx"):
                continue
            try:
                old = defs.get_schema(n.op_type, self.opset, "").since_version
                new = defs.get_schema(n.op_type, MIN_OPSET, "").since_version
            except Exception:  # no such op at that opset: the reader names it
                return False
            if old != new and old < _OLDER_DEFINITIONS.get(n.op_type, new):
                return False
        return True

    # -- the graph -----------------------------------------------------------------------

    def run(self) -> Graph:
        g = self.model.graph
        init_names = set()
        for t in g.initializer:
            self.env[t.name] = _T(const=tensor_to_array(t, self.folder, "initializer",
                                                        self.budget))
            init_names.add(t.name)
        for t in g.sparse_initializer:
            raise OnnxImportError(f"sparse initializer '{t.values.name}' is not supported")
        for vi in g.input:
            if vi.name in init_names:
                continue  # an initializer listed as an input (old exporters): a constant
            self.add_input(vi)
        self.convert_nodes(g.node)
        if not g.output:
            raise OnnxImportError("the ONNX graph has no outputs")
        seen = set()
        for vi in g.output:
            if vi.name not in self.env:
                raise OnnxImportError(f"graph output '{vi.name}' is not computed by any node")
            if vi.name in seen:
                raise OnnxImportError(f"graph output '{vi.name}' is listed twice")
            seen.add(vi.name)
            self.where = f"graph output '{vi.name}'"
            value = self.tensor(self.env[vi.name], vi.name)
            if value.name in {n for n, _ in self.graph.outputs} or any(
                    v is value for _, v in self.graph.outputs):
                value = self.node("copy", [value], {}, f"output {vi.name}")
            self.graph.outputs.append((value.name, value))
        return self.graph

    def add_input(self, vi) -> None:
        t = vi.type
        if not t.HasField("tensor_type"):
            raise OnnxImportError(f"input '{vi.name}' is not a tensor")
        dtype = self.dtype(t.tensor_type.elem_type, f"input '{vi.name}'")
        if not t.tensor_type.HasField("shape"):
            raise OnnxImportError(f"input '{vi.name}' has no shape",
                                  hint="give the model's inputs a rank and dims (symbolic "
                                       "names for the dynamic ones)")
        dims = []
        for k, d in enumerate(t.tensor_type.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(int(d.dim_value))
            elif d.HasField("dim_value"):
                raise OnnxImportError(f"input '{vi.name}' has dim {k} = {d.dim_value}; dims "
                                      "must be at least 1")
            else:
                raw = d.dim_param or f"{vi.name}_{k}"
                name = self.symbol_name(raw)
                self.graph.symbols.setdefault(name, None)
                dims.append(symbol(name))
        value = Value(legal_name(vi.name, self.taken, "x"), TensorType(dtype, tuple(dims)))
        self.graph.inputs.append(value)
        self.env[vi.name] = _T(value=value)

    def symbol_name(self, raw: str) -> str:
        if raw not in self._symbols:
            self._symbols[raw] = legal_name(raw, self.taken, "N")
        return self._symbols[raw]

    def convert_nodes(self, nodes) -> None:
        unsupported: dict[str, list[str]] = defaultdict(list)
        produced = set(self.env)
        for node in nodes:
            if node.domain not in ("", "ai.onnx"):
                unsupported[f"{node.domain}.{node.op_type}"].append(node.name or "(unnamed)")
            elif node.op_type not in CONVERTERS:
                unsupported[node.op_type].append(node.name or "(unnamed)")
            produced.update(o for o in node.output if o)
        if unsupported:
            listing = "; ".join(f"{op} ×{len(names)} ({', '.join(names[:5])}"
                                f"{', ...' if len(names) > 5 else ''})"
                                for op, names in sorted(unsupported.items()))
            raise OnnxImportError(f"the model uses {len(unsupported)} unsupported op type"
                                  f"{'s' if len(unsupported) > 1 else ''}: {listing}")
        for node in _topological(nodes, set(self.env)):
            self.convert(node)

    def convert(self, node) -> None:
        where = f"node '{node.name or '(unnamed)'}' ({node.op_type})"
        ins = []
        for name in node.input:
            if not name:
                ins.append(None)
            elif name not in self.env:
                raise OnnxImportError(f"{where} reads '{name}', which no node, input or "
                                      "initializer defines")
            else:
                ins.append(self.env[name])
        attrs = {a.name: self.onnx.helper.get_attribute_value(a) for a in node.attribute}
        self.where = where
        self.prefix = next((o for o in node.output if o), node.op_type)
        self.fresh: set[int] = set()
        if all(t is None or t.const is not None for t in ins) and node.op_type in FOLDABLE \
                and any(t is not None for t in ins) or node.op_type == "Constant":
            outs = self.fold(node, ins, attrs)
        else:
            try:
                outs = CONVERTERS[node.op_type](self, node, ins, attrs)
            except OnnxImportError:
                raise
            except (ops.OpTypeError, SymbolicError) as e:
                raise OnnxImportError(f"{where}: {getattr(e, 'message', e)}") from None
        names = [o for o in node.output]
        if len(outs) < len([n for n in names if n]):
            used = [n for n, _ in zip(names, range(len(outs)))]
            extra = [n for n in names[len(outs):] if n]
            raise OnnxImportError(f"{where}: its output{'s' if len(extra) > 1 else ''} "
                                  f"{', '.join(repr(e) for e in extra)} are not supported "
                                  f"(only {', '.join(repr(u) for u in used)})")
        for name, out in zip(names, outs):
            if not name:
                continue
            if name in self.env:
                raise OnnxImportError(f"{where} defines '{name}', which is already defined")
            if isinstance(out, np.ndarray):
                self.env[name] = _T(const=out)
            else:
                if out.uid in self.fresh:  # made by this node: it takes the ONNX name
                    self.taken.discard(out.name)
                    out.name = legal_name(name, self.taken, "t")
                    self.fresh.discard(out.uid)
                self.env[name] = _T(value=out)

    def fold(self, node, ins, attrs) -> list[np.ndarray]:
        """Evaluate a node on constant inputs with ONNX's reference implementation."""
        if node.op_type == "Constant":
            return [self.constant_value(node, attrs)]
        if any(t is not None and t.const.dtype == object for t in ins):  # symbolic dims
            from aotml.onnx_import.symbolic_fold import fold_symbolic
            return fold_symbolic(self, node, ins, attrs)
        for t in ins:
            if t is not None and t.const.size > FOLD_MAX_ELEMENTS:
                break
        else:
            if node.op_type in ("ConstantOfShape", "Expand", "Range", "Tile") or \
                    node.op_type in _BROADCASTING:
                self.check_fold_size(node, ins)
            from onnx.reference import ReferenceEvaluator
            helper = self.onnx.helper
            inputs = [f"in{k}" for k in range(len(ins))]
            feeds = {n: t.const for n, t in zip(inputs, ins) if t is not None}
            copy = helper.make_node(node.op_type, [n if t is not None else "" for n, t
                                                   in zip(inputs, ins)],
                                    [f"out{k}" for k in range(len(node.output))])
            copy.attribute.extend(node.attribute)
            try:
                outs = ReferenceEvaluator(copy).run(None, feeds)
            except Exception as e:
                raise OnnxImportError(f"{self.where}: cannot evaluate it on its constant "
                                      f"inputs: {e}") from None
            outs = [np.asarray(o) for o in outs]
            for o in outs:
                if o.size > FOLD_MAX_ELEMENTS:
                    raise OnnxImportError(f"{self.where}: folds to a constant of {o.size} "
                                          "elements, more than the limit")
            return outs
        return CONVERTERS[node.op_type](self, node, ins, attrs)

    def check_fold_size(self, node, ins) -> None:
        consts = [t.const for t in ins if t is not None]
        guess = 1
        if node.op_type == "ConstantOfShape":
            guess = math.prod(int(d) for d in np.ravel(consts[0])) if consts[0].size else 1
        elif node.op_type == "Expand" and len(consts) == 2:
            guess = _broadcast_size([consts[0].shape, [int(d) for d in np.ravel(consts[1])]])
        elif node.op_type in _BROADCASTING:
            guess = _broadcast_size([c.shape for c in consts])
        elif node.op_type == "Range" and len(consts) == 3:
            if any(c.size != 1 for c in consts):
                raise OnnxImportError(f"{self.where}: start, limit and delta must be scalars")
            start, limit, delta = (float(np.ravel(c)[0]) for c in consts)
            guess = 0 if delta == 0 else abs((limit - start) / delta)
        elif node.op_type == "Tile" and len(consts) == 2:
            guess = consts[0].size * math.prod(int(r) for r in np.ravel(consts[1]))
        if guess > FOLD_MAX_ELEMENTS or (node.op_type == "Range" and guess == 0 and
                                         float(np.ravel(consts[2])[0]) == 0):
            raise OnnxImportError(f"{self.where}: would make a constant of {guess:g} elements, "
                                  "more than the limit")

    def constant_value(self, node, attrs) -> np.ndarray:
        if "value" in attrs:
            return tensor_to_array(attrs["value"], self.folder, f"{self.where} value",
                                   self.budget)
        for key, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                           ("value_int", np.int64), ("value_ints", np.int64)):
            if key in attrs:
                return np.asarray(attrs[key], dtype=dtype)
        raise OnnxImportError(f"{self.where}: a Constant needs 'value', 'value_float(s)' or "
                              "'value_int(s)'")

    # -- helpers for converters ----------------------------------------------------------

    def dtype(self, code: int, what: str) -> str:
        table = onnx_dtypes()
        if code not in table:
            raise OnnxImportError(f"{what} has dtype {dtype_name(code)}, which aotml does not "
                                  f"support (it takes float32, float16, bfloat16, int32, int64 "
                                  "and bool)")
        return table[code][0]

    def tensor(self, t: _T, name: str = "const") -> Value:
        """A value for `t`; a constant becomes a param named after its ONNX tensor (one param
        per constant, however many nodes read it)."""
        if t.value is not None:
            return t.value
        array = t.const
        key = id(array)
        if key not in self.params:
            if array.dtype == object:
                raise OnnxImportError(f"{self.where}: '{name}' is computed from symbolic dims "
                                      f"({', '.join(map(str, array.flat))}) and used as data; "
                                      "only shape inputs may depend on them",
                                      hint="export the model with static shapes for these dims")
            dtypes = {np.dtype(d): n for n, d in onnx_dtypes().values()}
            if array.dtype not in dtypes:
                raise OnnxImportError(f"{self.where}: constant '{name}' has dtype "
                                      f"{array.dtype}, which aotml does not support")
            if 0 in array.shape:
                raise OnnxImportError(f"{self.where}: constant '{name}' has no elements "
                                      f"(shape {array.shape}); empty tensors are not supported")
            value = Value(legal_name(name, self.taken, "c"),
                          TensorType(dtypes[array.dtype], tuple(int(d) for d in array.shape)))
            # order="C", not ascontiguousarray, which makes a rank-0 constant shape (1,)
            self.graph.params.append(Param(value, np.asarray(array, order="C")))
            self.params[key] = value
            self._keep.append(array)  # so no other array takes its id()
        return self.params[key]

    def operand(self, node, ins, k: int) -> Value:
        t = ins[k] if k < len(ins) else None
        if t is None:
            raise OnnxImportError(f"{self.where}: input {k} is required")
        return self.tensor(t, node.input[k])

    def const_input(self, ins, k: int, what: str, required: bool = True) -> np.ndarray | None:
        t = ins[k] if k < len(ins) else None
        if t is None:
            if required:
                raise OnnxImportError(f"{self.where}: input {k} ({what}) is required")
            return None
        if t.const is None:
            raise OnnxImportError(f"{self.where}: its {what} must be a constant (an initializer "
                                  "or computed from constants); aotml needs it at build time")
        return t.const

    def ints(self, ins, k: int, what: str, required: bool = True,
             symbolic: bool = False) -> tuple[int, ...] | None:
        """A constant input's integers; with `symbolic`, Sym entries (dims computed from
        symbolic dims) are allowed too."""
        c = self.const_input(ins, k, what, required)
        if c is None:
            return None
        if c.dtype == object:
            if not symbolic:
                raise OnnxImportError(f"{self.where}: its {what} depends on symbolic dims "
                                      f"({', '.join(map(str, c.flat))}); aotml needs it as "
                                      "constant integers here",
                                      hint="export the model with static shapes for these dims")
            return tuple(v if isinstance(v, Sym) else int(v) for v in np.ravel(c))
        if c.dtype.kind not in "iu":
            raise OnnxImportError(f"{self.where}: its {what} must be integers, got {c.dtype}")
        return tuple(int(v) for v in np.ravel(c))

    def scalar(self, value: float, dtype: str) -> Value:
        """A rank-0 param holding `value` in `dtype`."""
        from aotml.graph.ir import DTYPES
        array = np.asarray(value, dtype=DTYPES[dtype])
        v = Value(legal_name(f"c_{_number_name(value)}", self.taken, "c"), TensorType(dtype, ()))
        self.graph.params.append(Param(v, array))
        return v

    def node(self, op: str, inputs: list[Value], attrs: dict, label: str | None = None) -> Value:
        """Append a registry op; its type comes from the op's own rule."""
        opdef = ops.REGISTRY[op]
        try:
            bound = opdef.bind_attrs(attrs)
            ty = opdef.infer(tuple(v.type for v in inputs), bound)
        except ops.OpTypeError as e:
            raise OnnxImportError(f"{self.where}: {e.message}") from None
        except SymbolicError as e:
            raise OnnxImportError(f"{self.where}: '{op}' does not support these symbolic dims "
                                  f"({', '.join(str(v.type) for v in inputs)}): {e}") from None
        if ty.rank > MAX_RANK:
            raise OnnxImportError(f"{self.where}: its result would have {ty.rank} dims; aotml "
                                  f"takes at most {MAX_RANK}")
        nbytes = math.prod(d for d in ty.shape if isinstance(d, int)) * ty.np_dtype.itemsize
        if nbytes > self.max_bytes:
            raise OnnxImportError(f"{self.where}: its result {ty} needs {nbytes} bytes, more "
                                  f"than the limit of {self.max_bytes}",
                                  hint="raise the limit with --max-bytes if the model is meant "
                                       "to be this large")
        value = Value(legal_name(label or f"{self.prefix}_{op}", self.taken, "t"), ty)
        self.fresh.add(value.uid)
        self.graph.nodes.append(Node(op, tuple(inputs), tuple(sorted(bound.items())), value))
        return value


# folded ops whose result is the broadcast of their inputs
_BROADCASTING = frozenset({"Add", "Sub", "Mul", "Div", "Equal", "Less", "Greater", "Where",
                           "Max", "Min"})


def _broadcast_size(shapes) -> int:
    """The element count of `shapes` broadcast together (0 where they do not broadcast or
    a dim is negative: the evaluator then says what is wrong)."""
    count = 1
    for k in range(1, max((len(s) for s in shapes), default=0) + 1):
        dims = {int(s[-k]) for s in shapes if len(s) >= k} - {1}
        if len(dims) > 1 or any(d < 0 for d in dims):
            return 0
        count *= dims.pop() if dims else 1
    return count


def _number_name(value: float) -> str:
    text = f"{value:g}".replace("-", "m").replace(".", "p").replace("+", "")
    return text


def _topological(nodes, defined: set[str]) -> list:
    """The nodes in an order where each reads only defined names; an error for a cycle."""
    producer = {}
    for i, n in enumerate(nodes):
        for o in n.output:
            if o:
                producer.setdefault(o, i)
    order, state = [], [0] * len(nodes)  # 0 new, 1 on the stack, 2 done
    for start in range(len(nodes)):
        if state[start]:
            continue
        stack = [(start, iter(nodes[start].input))]
        state[start] = 1
        while stack:
            i, it = stack[-1]
            for name in it:
                j = producer.get(name)
                if not name or name in defined or j is None:
                    continue
                if state[j] == 1:
                    raise OnnxImportError(f"the graph has a cycle through node "
                                          f"'{nodes[j].name or nodes[j].op_type}' ('{name}')")
                if state[j] == 0:
                    state[j] = 1
                    stack.append((j, iter(nodes[j].input)))
                    break
            else:
                stack.pop()
                state[i] = 2
                order.append(nodes[i])
    return order


# ---------------------------------------------------------------------------------------------
# Converters: (importer, node, inputs, attributes) -> one value or constant per output

Converter = Callable[["_Importer", object, list, dict], list]
CONVERTERS: dict[str, Converter] = {}
# shape computations folded when every input is a constant
FOLDABLE = frozenset({
    "Shape", "Size", "Gather", "Unsqueeze", "Squeeze", "Concat", "Cast", "Add", "Sub", "Mul",
    "Div", "Slice", "Reshape", "ConstantOfShape", "Range", "Equal", "Where", "Identity", "Neg",
    "ReduceProd", "Transpose", "Expand", "Tile", "Less", "Greater", "Not", "Floor", "Ceil",
    "Sqrt", "Max", "Min", "Abs", "Flatten", "Mod", "And", "Or", "Xor", "GreaterOrEqual",
    "LessOrEqual",
})


def converter(*names: str):
    def register(fn: Converter) -> Converter:
        for n in names:
            CONVERTERS[n] = fn
        return fn
    return register


_SIMPLE = {"Add": "add", "Sub": "sub", "Mul": "mul",
           "Equal": "eq", "Less": "lt", "LessOrEqual": "le", "Greater": "gt",
           "GreaterOrEqual": "ge", "Neg": "neg", "Abs": "abs", "Exp": "exp", "Log": "log",
           "Sqrt": "sqrt", "Tanh": "tanh", "Sigmoid": "sigmoid", "Relu": "relu", "Erf": "erf",
           "Identity": "copy", "Where": "where"}


@converter(*_SIMPLE)
def _simple(imp, node, ins, attrs):
    return [imp.node(_SIMPLE[node.op_type], [imp.operand(node, ins, k)
                                             for k in range(len(ins))], {})]


@converter("And", "Or", "Xor", "Not")
def _logical(imp, node, ins, attrs):
    """Boolean logic through `where` and comparisons (attention masks from exporters):
    a and b = where(a, b, false), a or b = where(a, true, b), a xor b = a != b,
    not a = (a == false)."""
    values = [imp.operand(node, ins, k) for k in range(len(ins))]
    for v in values:
        if v.type.dtype != "bool":
            raise OnnxImportError(f"{imp.where}: {node.op_type} takes bool operands, got {v.type}")
    if node.op_type == "Not":
        return [imp.node("eq", [values[0], imp.scalar(False, "bool")], {})]
    a, b = values
    if node.op_type == "Xor":
        return [imp.node("ne", [a, b], {})]
    if node.op_type == "And":
        return [imp.node("where", [a, b, imp.scalar(False, "bool")], {})]
    return [imp.node("where", [a, imp.scalar(True, "bool"), b], {})]


@converter("Max", "Min")
def _variadic(imp, node, ins, attrs):
    op = "maximum" if node.op_type == "Max" else "minimum"
    values = [imp.operand(node, ins, k) for k in range(len(ins))]
    out = values[0] if len(values) > 1 else imp.node("copy", values, {})
    for v in values[1:]:
        out = imp.node(op, [out, v], {})
    return [out]


@converter("Reciprocal")
def _reciprocal(imp, node, ins, attrs):
    x = imp.operand(node, ins, 0)
    return [imp.node("div", [imp.scalar(1.0, x.type.dtype), x], {})]


@converter("LeakyRelu")
def _leaky_relu(imp, node, ins, attrs):
    return [imp.node("leaky_relu", [imp.operand(node, ins, 0)],
                     {"alpha": float(attrs.get("alpha", 0.01))})]


@converter("Gelu")
def _gelu(imp, node, ins, attrs):
    approximate = attrs.get("approximate", b"none")
    approximate = approximate.decode() if isinstance(approximate, bytes) else approximate
    return [imp.node("gelu", [imp.operand(node, ins, 0)], {"approximate": approximate})]


@converter("Clip")
def _clip(imp, node, ins, attrs):
    x = imp.operand(node, ins, 0)
    bounds = {}
    for k, key in ((1, "min"), (2, "max")):
        c = imp.const_input(ins, k, key, required=False)
        if c is not None:
            if c.size != 1:
                raise OnnxImportError(f"{imp.where}: its {key} must be a scalar")
            bounds[key] = np.ravel(c)[0]
    if x.type.dtype in ("i32", "i64"):  # exactly, past float precision: max, then min
        out = x
        for key, op in (("min", "maximum"), ("max", "minimum")):
            if key in bounds:
                out = imp.node(op, [out, imp.scalar(int(bounds[key]), x.type.dtype)], {})
        return [out if out is not x else imp.node("copy", [x], {})]
    return [imp.node("clip", [x], {k: float(v) for k, v in bounds.items()})]


@converter("Dropout")
def _dropout(imp, node, ins, attrs):
    training = imp.const_input(ins, 2, "training_mode", required=False)
    ratio = imp.const_input(ins, 1, "ratio", required=False)
    for what, c in (("training_mode", training), ("ratio", ratio)):
        if c is not None and c.size != 1:
            raise OnnxImportError(f"{imp.where}: its {what} must be a scalar, got shape "
                                  f"{c.shape}")
    if training is not None and bool(np.ravel(training)[0]) and \
            (ratio is None or float(np.ravel(ratio)[0]) != 0):  # ratio 0: nothing dropped
        raise OnnxImportError(f"{imp.where}: dropout in training mode is not supported (it is "
                              "random; aotml compiles inference)")
    x = imp.operand(node, ins, 0)
    out = [imp.node("copy", [x], {})]
    if len(node.output) > 1 and node.output[1]:  # the mask: all kept
        out.append(imp.node("broadcast_to", [imp.scalar(True, "bool")],
                            {"shape": _writable_dims(imp, list(x.type.shape))}))
    return out


@converter("Cast")
def _cast(imp, node, ins, attrs):
    x = imp.operand(node, ins, 0)
    to = imp.dtype(attrs["to"], f"{imp.where} target")
    return [imp.node("cast", [x], {"dtype": to})]


@converter("MatMul")
def _matmul(imp, node, ins, attrs):
    a, b = imp.operand(node, ins, 0), imp.operand(node, ins, 1)
    # numpy's 1-D rules: a vector on the left is a row, on the right a column, removed after
    a_vec, b_vec = a.type.rank == 1, b.type.rank == 1
    if a_vec:
        a = imp.node("unsqueeze", [a], {"axes": (0,)})
    if b_vec:
        b = imp.node("unsqueeze", [b], {"axes": (1,)})
    out = imp.node("matmul", [a, b], {})
    drop = tuple(ax for ax, vec in ((-2, a_vec), (-1, b_vec)) if vec)
    if drop:
        rank = out.type.rank
        out = imp.node("squeeze", [out], {"axes": tuple(sorted(a % rank for a in drop))})
    return [out]


@converter("Gemm")
def _gemm(imp, node, ins, attrs):
    a, b = imp.operand(node, ins, 0), imp.operand(node, ins, 1)
    if attrs.get("transA", 0):
        a = imp.node("transpose", [a], {"perm": (1, 0)})
    if attrs.get("transB", 0):
        b = imp.node("transpose", [b], {"perm": (1, 0)})
    out = imp.node("matmul", [a, b], {})
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    if alpha != 1.0:
        out = imp.node("mul", [out, imp.scalar(alpha, out.type.dtype)], {})
    if len(ins) > 2 and ins[2] is not None:
        c = imp.operand(node, ins, 2)
        if beta != 1.0:
            c = imp.node("mul", [c, imp.scalar(beta, c.type.dtype)], {})
        out = imp.node("add", [out, c], {})
    return [out]


_REDUCE = {"ReduceSum": "sum", "ReduceMean": "mean", "ReduceMax": "max", "ReduceMin": "min",
           "ReduceProd": "prod"}


@converter(*_REDUCE)
def _reduce(imp, node, ins, attrs):
    x = imp.operand(node, ins, 0)
    if "axes" in attrs:
        axes = tuple(int(a) for a in attrs["axes"])
    else:
        axes = imp.ints(ins, 1, "axes", required=False) or ()
    keep = bool(attrs.get("keepdims", 1))
    if not axes:
        if attrs.get("noop_with_empty_axes", 0):
            return [imp.node("copy", [x], {})]
        axes = tuple(range(x.type.rank))
    if x.type.rank == 0:
        return [imp.node("copy", [x], {})]
    return [imp.node(_REDUCE[node.op_type], [x], {"axis": axes, "keepdims": keep})]


@converter("ArgMax", "ArgMin")
def _arg(imp, node, ins, attrs):
    op = "argmax" if node.op_type == "ArgMax" else "argmin"
    x = imp.operand(node, ins, 0)
    axis, keep = int(attrs.get("axis", 0)), bool(attrs.get("keepdims", 1))
    if not attrs.get("select_last_index", 0):
        return [imp.node(op, [x], {"axis": axis, "keepdims": keep})]
    # the last of ties: the first along the reversed axis, counted from the end
    rank = x.type.rank
    if not -rank <= axis < rank:
        raise OnnxImportError(f"{imp.where}: axis {axis} is out of range for {x.type}")
    dim = x.type.shape[axis % rank]
    if not isinstance(dim, int):
        raise OnnxImportError(f"{imp.where}: select_last_index=1 over a symbolic dim is not "
                              "supported")
    flipped = imp.node("slice", [x], {"starts": (-1,), "ends": (-(1 << 62),),
                                      "axes": (axis % rank,), "steps": (-1,)})
    index = imp.node(op, [flipped], {"axis": axis, "keepdims": keep})
    return [imp.node("sub", [imp.scalar(dim - 1, "i64"), index], {})]


@converter("Softmax", "LogSoftmax")
def _softmax(imp, node, ins, attrs):
    op = "softmax" if node.op_type == "Softmax" else "log_softmax"
    return [imp.node(op, [imp.operand(node, ins, 0)], {"axis": int(attrs.get("axis", -1))})]


@converter("LayerNormalization")
def _layer_norm(imp, node, ins, attrs):
    x, scale = imp.operand(node, ins, 0), imp.operand(node, ins, 1)
    if len(ins) > 2 and ins[2] is not None:
        bias = imp.operand(node, ins, 2)
    else:
        bias = imp.tensor(_T(const=np.zeros(tuple(int(d) for d in scale.type.shape),
                                            dtype=scale.type.np_dtype)), "zero_bias")
    axis, eps = int(attrs.get("axis", -1)), float(attrs.get("epsilon", 1e-5))
    y = imp.node("layer_norm", [x, scale, bias], {"axis": axis, "eps": eps})
    if not any(node.output[1:]):
        return [y]
    # the statistics too (Mean, InvStdDev: x's dims before axis, then 1s), in stash_type
    rank = x.type.rank
    if not -rank <= axis < rank:
        raise OnnxImportError(f"{imp.where}: axis {axis} is out of range for {x.type}")
    stash = imp.dtype(int(attrs.get("stash_type", 1)), f"{imp.where} stash_type")
    xs = x if x.type.dtype == stash else imp.node("cast", [x], {"dtype": stash})
    over = {"axis": tuple(range(axis % rank, rank)), "keepdims": True}
    mean = imp.node("mean", [xs], over)
    dev = imp.node("sub", [xs, mean], {})
    var = imp.node("mean", [imp.node("mul", [dev, dev], {})], over)
    std = imp.node("sqrt", [imp.node("add", [var, imp.scalar(eps, stash)], {})], {})
    return [y, mean, imp.node("div", [imp.scalar(1.0, stash), std], {})]


@converter("RMSNormalization")
def _rms_norm(imp, node, ins, attrs):
    return [imp.node("rms_norm", [imp.operand(node, ins, 0), imp.operand(node, ins, 1)],
                     {"axis": int(attrs.get("axis", -1)),
                      "eps": float(attrs.get("epsilon", 1e-5))})]


@converter("BatchNormalization")
def _batch_norm(imp, node, ins, attrs):
    x, scale, bias, mean, var = (imp.operand(node, ins, k) for k in range(5))
    eps = float(attrs.get("epsilon", 1e-5))
    if not attrs.get("training_mode", 0):
        return [imp.node("batch_norm", [x, scale, bias, mean, var], {"eps": eps})]
    # training mode: normalized by the batch's own statistics (over every axis but 1; the
    # variance the population's), which also update the running ones by momentum
    over = {"axis": tuple(k for k in range(x.type.rank) if k != 1), "keepdims": False}
    batch_mean = imp.node("mean", [x], over)
    shape = [1, x.type.shape[1]] + [1] * (x.type.rank - 2)
    dev = imp.node("sub", [x, imp.node("reshape", [batch_mean],
                                       {"shape": _writable_dims(imp, shape)})], {})
    batch_var = imp.node("mean", [imp.node("mul", [dev, dev], {})], over)
    y = imp.node("batch_norm", [x, scale, bias, batch_mean, batch_var], {"eps": eps})
    momentum = float(attrs.get("momentum", 0.9))
    dt = mean.type.dtype

    def running(old, new):
        if new.type.dtype != dt:
            new = imp.node("cast", [new], {"dtype": dt})
        return imp.node("add", [imp.node("mul", [old, imp.scalar(momentum, dt)], {}),
                                imp.node("mul", [new, imp.scalar(1 - momentum, dt)], {})], {})
    return [y, running(mean, batch_mean), running(var, batch_var)]


@converter("Reshape")
def _reshape(imp, node, ins, attrs):
    x = imp.operand(node, ins, 0)
    shape = list(imp.ints(ins, 1, "shape", symbolic=True))
    if not attrs.get("allowzero", 0):
        for k, d in enumerate(shape):
            if d == 0:
                if k >= x.type.rank:
                    raise OnnxImportError(f"{imp.where}: shape {tuple(shape)} copies dim {k} "
                                          f"of {x.type}, which has no such dim")
                shape[k] = x.type.shape[k]
    elif 0 in shape:
        raise OnnxImportError(f"{imp.where}: a zero-size reshape is not supported")
    return [imp.node("reshape", [x], {"shape": _writable_dims(imp, shape)})]


def _writable_dims(imp, shape) -> tuple:
    """A dims attribute that `.mlg` can state: one compound symbolic dim becomes -1."""
    compound = [k for k, d in enumerate(shape) if isinstance(d, Sym) and
                (len(d.terms) != 1 or d.terms[0][1] != 1 or len(d.terms[0][0]) != 1)]
    if not compound:
        return tuple(shape)
    if len(compound) > 1 or -1 in shape:
        raise OnnxImportError(f"{imp.where}: cannot state the target shape "
                              f"{tuple(shape)} (more than one dim is a symbolic expression)")
    return tuple(-1 if k == compound[0] else d for k, d in enumerate(shape))


@converter("Flatten")
def _flatten(imp, node, ins, attrs):
    x = imp.operand(node, ins, 0)
    rank = x.type.rank
    axis = int(attrs.get("axis", 1))
    if not -rank <= axis <= rank:
        raise OnnxImportError(f"{imp.where}: axis {axis} is out of range for {x.type}")
    axis = axis + rank if axis < 0 else axis  # in [-r, r]: -1 leaves the last dim apart
    lead = math.prod(x.type.shape[:axis]) if axis else 1
    rest = math.prod(x.type.shape[axis:]) if axis < x.type.rank else 1
    return [imp.node("reshape", [x], {"shape": _writable_dims(imp, [lead, rest])})]


@converter("Transpose")
def _transpose(imp, node, ins, attrs):
    x = imp.operand(node, ins, 0)
    perm = tuple(int(p) for p in attrs.get("perm", range(x.type.rank - 1, -1, -1)))
    return [imp.node("transpose", [x], {"perm": perm})]


@converter("Expand")
def _expand(imp, node, ins, attrs):
    x = imp.operand(node, ins, 0)
    shape = imp.ints(ins, 1, "shape", symbolic=True)
    from aotml.ops.core import broadcast_shapes
    target = broadcast_shapes(tuple(x.type.shape), shape)  # ONNX Expand broadcasts both ways
    if target is None:
        raise OnnxImportError(f"{imp.where}: {x.type} does not broadcast with {shape}")
    if tuple(target) == tuple(x.type.shape):
        return [imp.node("copy", [x], {})]
    return [imp.node("broadcast_to", [x], {"shape": _writable_dims(imp, list(target))})]


@converter("Concat")
def _concat(imp, node, ins, attrs):
    # empty parts (constants with no elements, as an empty Split part) add nothing
    keep = [k for k, t in enumerate(ins)
            if not (t is not None and t.const is not None and t.const.size == 0)]
    values = [imp.operand(node, ins, k) for k in keep or range(len(ins))]
    if len(values) == 1:
        return [imp.node("copy", values, {})]
    return [imp.node("concat", values, {"axis": int(attrs["axis"])})]


@converter("Split")
def _split(imp, node, ins, attrs):
    x = imp.operand(node, ins, 0)
    axis = int(attrs.get("axis", 0))
    rank = x.type.rank
    if not -rank <= axis < rank:
        raise OnnxImportError(f"{imp.where}: axis {axis} is out of range for {x.type}")
    axis %= rank
    dim = x.type.shape[axis]
    parts = len(node.output)
    sizes = imp.ints(ins, 1, "split", required=False) or (
        tuple(int(s) for s in attrs["split"]) if "split" in attrs else None)
    if sizes is None:
        if isinstance(dim, Sym):
            raise OnnxImportError(f"{imp.where}: splitting the symbolic dim {dim} is not "
                                  "supported")
        n = int(attrs.get("num_outputs", parts))
        if n != parts:
            raise OnnxImportError(f"{imp.where}: num_outputs is {n}, but the node has {parts} "
                                  "outputs")
        chunk = -(-dim // n)
        sizes = tuple(min(chunk, dim - k * chunk) for k in range(n))
    if len(sizes) != parts:
        raise OnnxImportError(f"{imp.where}: {len(sizes)} split sizes for {parts} outputs")
    if isinstance(dim, Sym) or sum(sizes) != dim or min(sizes) < 0:
        raise OnnxImportError(f"{imp.where}: split sizes {sizes} do not add up to dim {axis} "
                              f"of {x.type}")
    outs, start = [], 0
    for size in sizes:
        if size == 0:  # a constant with no elements: fine where only Concat reads it
            if not x.type.is_static:
                raise OnnxImportError(f"{imp.where}: an empty split part is not supported")
            shape = [int(d) for d in x.type.shape]
            shape[axis] = 0
            outs.append(np.zeros(shape, dtype=x.type.np_dtype))
            continue
        outs.append(imp.node("slice", [x], {"starts": (start,), "ends": (start + size,),
                                            "axes": (axis,)}))
        start += size
    return outs


@converter("Slice")
def _slice(imp, node, ins, attrs):
    x = imp.operand(node, ins, 0)
    starts, ends = imp.ints(ins, 1, "starts"), imp.ints(ins, 2, "ends")
    axes = imp.ints(ins, 3, "axes", required=False) or ()
    steps = imp.ints(ins, 4, "steps", required=False) or ()
    big = (1 << 62)
    starts = tuple(max(min(s, big), -big) for s in starts)
    ends = tuple(max(min(e, big), -big) for e in ends)
    return [imp.node("slice", [x], {"starts": starts, "ends": ends, "axes": axes,
                                    "steps": steps})]


@converter("Gather")
def _gather(imp, node, ins, attrs):
    x = imp.operand(node, ins, 0)
    axis = int(attrs.get("axis", 0))
    if ins[1] is not None and ins[1].const is not None and x.type.rank:
        dim = x.type.shape[axis % x.type.rank] if -x.type.rank <= axis < x.type.rank else None
        c = ins[1].const
        if isinstance(dim, int) and c.size and (c.min() < -dim or c.max() >= dim):
            bad = int(c.max() if c.max() >= dim else c.min())
            raise OnnxImportError(f"{imp.where}: constant index {bad} is out of range for dim "
                                  f"{axis} of {x.type} (size {dim})")
    return [imp.node("gather", [x, imp.operand(node, ins, 1)], {"axis": axis})]


@converter("Pad")
def _pad(imp, node, ins, attrs):
    x = imp.operand(node, ins, 0)
    pads = imp.ints(ins, 1, "pads")
    value = imp.const_input(ins, 2, "constant_value", required=False)
    axes = imp.ints(ins, 3, "axes", required=False)
    mode = attrs.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    rank = x.type.rank
    if axes:
        if len(pads) != 2 * len(axes) or not all(-rank <= a < rank for a in axes):
            raise OnnxImportError(f"{imp.where}: pads {pads} do not fit axes {axes} of {x.type}")
        full = [0] * (2 * rank)
        for k, a in enumerate(axes):
            a %= rank
            full[a], full[rank + a] = pads[k], pads[len(axes) + k]
        pads = tuple(full)
    if mode == "wrap":
        return [_wrap_pad(imp, x, pads)]
    out = {"pads": pads, "mode": mode}
    if value is not None and value.size:
        out["value"] = float(np.ravel(value)[0])
    return [imp.node("pad", [x], out)]


def _wrap_pad(imp, x: Value, pads) -> Value:
    """Pad mode "wrap": each axis grows by the slices from its other end (concat); negative
    pads crop first."""
    rank = x.type.rank
    if len(pads) != 2 * rank:
        raise OnnxImportError(f"{imp.where}: pads {tuple(pads)} do not fit {x.type}")
    for a in range(rank):
        lo, hi = pads[a], pads[rank + a]
        if lo < 0 or hi < 0:
            x = imp.node("slice", [x], {"starts": (max(0, -lo),),
                                        "ends": (hi if hi < 0 else (1 << 62),), "axes": (a,)})
        lo, hi = max(lo, 0), max(hi, 0)
        if not lo and not hi:
            continue
        dim = x.type.shape[a]
        if not isinstance(dim, int) or lo > dim or hi > dim:
            raise OnnxImportError(f"{imp.where}: wrap padding by more than the dim (or a "
                                  "symbolic one) is not supported")
        parts = ([imp.node("slice", [x], {"starts": (dim - lo,), "ends": (dim,), "axes": (a,)})]
                 if lo else []) + [x] + \
            ([imp.node("slice", [x], {"starts": (0,), "ends": (hi,), "axes": (a,)})] if hi else [])
        x = imp.node("concat", parts, {"axis": a})
    return x


@converter("Squeeze")
def _squeeze(imp, node, ins, attrs):
    x = imp.operand(node, ins, 0)
    axes = imp.ints(ins, 1, "axes", required=False) or ()
    return [imp.node("squeeze", [x], {"axes": axes})]


@converter("Unsqueeze")
def _unsqueeze(imp, node, ins, attrs):
    x = imp.operand(node, ins, 0)
    return [imp.node("unsqueeze", [x], {"axes": imp.ints(ins, 1, "axes")})]


def _window(imp, attrs, x: TensorType, kernel) -> tuple[tuple, tuple, tuple]:
    """ONNX's (strides, dilations, pads) of a convolution or pooling over x's spatial dims
    (pads: all begins, then all ends), auto_pad resolved."""
    n = x.rank - 2
    if n < 1 or len(kernel) != n:
        raise OnnxImportError(f"{imp.where}: kernel {tuple(kernel)} does not fit {x}")
    stride = tuple(int(s) for s in attrs.get("strides", (1,) * n))
    dil = tuple(int(s) for s in attrs.get("dilations", (1,) * n))
    pads = tuple(int(p) for p in attrs.get("pads", (0,) * (2 * n)))
    if len(stride) != n or len(dil) != n or len(pads) != 2 * n or \
            min(kernel + stride + dil) < 1 or min(pads) < 0:
        raise OnnxImportError(f"{imp.where}: kernel {tuple(kernel)}, strides {stride}, "
                              f"dilations {dil} and pads {pads} do not fit {x} (kernel, "
                              f"strides, dilations: {n} positive each; pads: {2 * n}, none "
                              "negative)")
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0] * (2 * n)
        for k in range(n):
            size = x.shape[2 + k]
            if isinstance(size, Sym):
                raise OnnxImportError(f"{imp.where}: auto_pad over a symbolic dim")
            total = max(0, (-(-size // stride[k]) - 1) * stride[k]
                        + (kernel[k] - 1) * dil[k] + 1 - size)
            small, large = total // 2, total - total // 2
            lo, hi = (small, large) if auto == "SAME_UPPER" else (large, small)
            pads[k], pads[n + k] = lo, hi
        return stride, dil, tuple(pads)
    if auto == "VALID" or "pads" not in attrs:
        return stride, dil, (0,) * (2 * n)
    return stride, dil, pads


def _to_2d(imp, x: Value) -> Value:
    """NCL -> NC1L (unchanged when already 4-D)."""
    return x if x.type.rank == 4 else imp.node("unsqueeze", [x], {"axes": (2,)})


def _from_2d(imp, y: Value, rank: int) -> Value:
    return y if rank == 4 else imp.node("squeeze", [y], {"axes": (2,)})


@converter("Conv")
def _conv(imp, node, ins, attrs):
    x, w = imp.operand(node, ins, 0), imp.operand(node, ins, 1)
    rank = x.type.rank
    if rank not in (3, 4):
        raise OnnxImportError(f"{imp.where}: only 1-D and 2-D (NCL, NCHW) inputs are "
                              f"supported (aotml's convolution is 2-D), got {x.type}")
    kernel = tuple(int(k) for k in attrs.get("kernel_shape", w.type.shape[2:]))
    stride, dil, pads = _window(imp, attrs, x.type, kernel)
    if rank == 3:  # as NC1L
        stride, dil, pads = (1, *stride), (1, *dil), (0, pads[0], 0, pads[1])
    args = [_to_2d(imp, x), _to_2d(imp, w)]
    if len(ins) > 2 and ins[2] is not None:
        args.append(imp.operand(node, ins, 2))
    y = imp.node("conv2d", args, {"stride": stride, "dilation": dil, "padding": pads,
                                  "groups": int(attrs.get("group", 1))})
    return [_from_2d(imp, y, rank)]


def _pool_extent(size: int, k: int, s: int, d: int, lo: int, hi: int, ceil: bool) -> tuple:
    """(output size, padding to add after `hi` so every window lies in the padded input), as
    ONNX: in ceil mode the last window may run past the end, but must start inside the input
    or its leading padding."""
    span = d * (k - 1) + 1
    room = size + lo + hi - span
    out = (-(-room // s) if ceil else room // s) + 1
    if ceil and (out - 1) * s >= size + lo:
        out -= 1
    return out, max(0, (out - 1) * s + span - (size + lo + hi))


@converter("MaxPool", "AveragePool")
def _pool(imp, node, ins, attrs):
    """1-D pooling runs as 2-D over NC1L; 3-D as two 2-D poolings (over H, W with the depth
    folded into the channels, then over D), exact since a max, and a mean over a box whose
    count is a product of per-dim counts, are separable."""
    x = imp.operand(node, ins, 0)
    indices = node.op_type == "MaxPool" and len(node.output) > 1 and bool(node.output[1])
    rank = x.type.rank
    if indices and rank != 4:
        raise OnnxImportError(f"{imp.where}: the Indices output is supported for 2-D pooling "
                              "only")
    if rank not in (3, 4, 5):
        raise OnnxImportError(f"{imp.where}: only 1-D, 2-D and 3-D pooling is supported, got "
                              f"{x.type}")
    kernel = tuple(int(k) for k in attrs["kernel_shape"])
    stride, dil, pads = _window(imp, attrs, x.type, kernel)
    how = (node.op_type, bool(attrs.get("ceil_mode", 0)),
           bool(attrs.get("count_include_pad", 0)))
    if rank == 3:
        y = _pool2d(imp, how, _to_2d(imp, x), (1, *kernel), (1, *stride), (1, *dil),
                    (0, pads[0], 0, pads[1]))
        return [_from_2d(imp, y, rank)]
    if rank == 4:
        y = _pool2d(imp, how, x, kernel, stride, dil, pads)
        if indices:
            return [y, _max_pool_indices(imp, x, y, kernel, stride, dil, pads,
                                         bool(attrs.get("storage_order", 0)))]
        return [y]
    n, c, d, h, w = x.type.shape
    if not all(isinstance(v, int) for v in (c, d, h, w)):
        raise OnnxImportError(f"{imp.where}: 3-D pooling needs static channels and sizes")
    y = imp.node("reshape", [x], {"shape": _writable_dims(imp, [n, c * d, h, w])})
    y = _pool2d(imp, how, y, kernel[1:], stride[1:], dil[1:],
                (pads[1], pads[2], pads[4], pads[5]))
    oh, ow = y.type.shape[2:]
    y = imp.node("reshape", [y], {"shape": _writable_dims(imp, [n, c, d, oh * ow])})
    y = _pool2d(imp, how, y, (kernel[0], 1), (stride[0], 1), (dil[0], 1),
                (pads[0], 0, pads[3], 0))
    od = y.type.shape[2]
    return [imp.node("reshape", [y], {"shape": _writable_dims(imp, [n, c, od, oh, ow])})]


def _max_pool_indices(imp, x: Value, y: Value, kernel, stride, dil, pads,
                      column_major: bool) -> Value:
    """MaxPool's Indices (flat positions in x of each window's first maximum, the plane row-
    or column-major as storage_order says): the
    windows gathered from x (a -inf column standing for padding), argmax, and the winner's
    position looked up in the constant table of window taps."""
    n, c, h, w = x.type.shape
    oh, ow = y.type.shape[2:]
    if not all(isinstance(v, int) for v in (n, c, h, w)):
        raise OnnxImportError(f"{imp.where}: the Indices output needs static dims")
    taps = []
    for k, (size, out) in enumerate(((h, oh), (w, ow))):
        t = (np.arange(out)[:, None] * stride[k] + np.arange(kernel[k])[None, :] * dil[k]
             - pads[k])  # [out, kernel] positions along this dim
        taps.append(np.where((t >= 0) & (t < size), t, -1))
    th, tw = taps[0][:, None, :, None], taps[1][None, :, None, :]
    spot = tw * h + th if column_major else th * w + tw
    table = np.where((th >= 0) & (tw >= 0), spot, h * w)  # [oh, ow, kh, kw]
    window = kernel[0] * kernel[1]
    table = table.reshape(oh * ow * window).astype(np.int64)
    flat = imp.node("reshape", [x], {"shape": (n, c, h * w)})
    from aotml.graph.ir import DTYPES
    pad = np.full((n, c, 1), -np.inf, dtype=DTYPES[x.type.dtype])
    flat = imp.node("concat", [flat, imp.tensor(_T(const=pad), "pool_pad")], {"axis": 2})
    got = imp.node("gather", [flat, imp.tensor(_T(const=table), "pool_taps")], {"axis": 2})
    got = imp.node("reshape", [got], {"shape": (n, c, oh * ow, window)})
    best = imp.node("argmax", [got], {"axis": -1, "keepdims": False})  # [n, c, oh * ow]
    rows = np.arange(oh * ow, dtype=np.int64) * window
    where = imp.node("gather", [imp.tensor(_T(const=table), "pool_taps"),
                                imp.node("add", [best, imp.tensor(_T(const=rows),
                                                                  "pool_rows")], {})],
                     {"axis": 0})
    base = (np.arange(n * c, dtype=np.int64) * h * w).reshape(n, c, 1)
    where = imp.node("add", [where, imp.tensor(_T(const=base), "pool_base")], {})
    return imp.node("reshape", [where], {"shape": (n, c, oh, ow)})


def _pool2d(imp, how, x: Value, kernel, stride, dil, pads) -> Value:
    """ONNX MaxPool/AveragePool on NCHW x, `pads` (top, left, bottom, right)."""
    op, ceil, include = how
    sizes = x.type.shape[2:]
    extra = [0, 0]
    if ceil:
        if not all(isinstance(s, int) for s in sizes):
            raise OnnxImportError(f"{imp.where}: ceil_mode=1 over symbolic dims is not "
                                  "supported")
        for k in range(2):
            _, extra[k] = _pool_extent(sizes[k], kernel[k], stride[k], dil[k], pads[k],
                                       pads[2 + k], True)
    full = (pads[0], pads[1], pads[2] + extra[0], pads[3] + extra[1])
    kernel, stride, dil = tuple(kernel), tuple(stride), tuple(dil)
    if op == "MaxPool":  # padding never wins, so the extra is harmless
        return imp.node("max_pool2d", [x], {"kernel": kernel, "stride": stride,
                                            "dilation": dil, "padding": full})
    if dil == (1, 1) and not (include and any(extra)):
        return imp.node("avg_pool2d", [x], {"kernel": kernel, "stride": stride,
                                            "padding": full, "count_include_pad": include})
    # dilated, or counting the padding but not the ceil mode's extra: a window sum (a
    # depthwise convolution with ones) over a constant count, found as ONNX counts
    c = x.type.shape[1]
    if not (isinstance(c, int) and all(isinstance(s, int) for s in sizes)):
        raise OnnxImportError(f"{imp.where}: this average pooling needs static channels and "
                              "sizes")
    from aotml.graph.ir import DTYPES
    ones = np.ones((c, 1, *kernel), dtype=DTYPES[x.type.dtype])
    total = imp.node("conv2d", [x, imp.tensor(_T(const=ones), "pool_ones")],
                     {"stride": stride, "dilation": dil, "padding": full, "groups": c})
    counts = []
    for k in range(2):
        out, _ = _pool_extent(sizes[k], kernel[k], stride[k], dil[k], pads[k], pads[2 + k],
                              ceil)
        taps = np.arange(out)[:, None] * stride[k] + np.arange(kernel[k])[None, :] * dil[k]
        lo, hi = (0, sizes[k] + pads[k] + pads[2 + k]) if include else \
            (pads[k], pads[k] + sizes[k])
        counts.append(((taps >= lo) & (taps < hi)).sum(axis=1))
    count = np.maximum(counts[0][:, None] * counts[1][None, :], 1).astype(DTYPES[x.type.dtype])
    return imp.node("div", [total, imp.tensor(_T(const=count), "pool_count")], {})


@converter("GlobalAveragePool")
def _global_avg_pool(imp, node, ins, attrs):
    return [imp.node("global_avg_pool", [imp.operand(node, ins, 0)], {})]


@converter("Attention")
def _attention(imp, node, ins, attrs):
    """ONNX Attention (opset 23 on). Plain and causal attention, also grouped-query (the K/V
    heads repeated) and 3-D inputs (heads split by q_num_heads/kv_num_heads), is aotml's
    `attention` op; masks, past key/values, nonpad_kv_seqlen, softcap, sliding windows and the
    qk_matmul_output output are spelled out in matmul, softmax and where, as ONNX's reference."""
    q, k, v = (imp.operand(node, ins, i) for i in range(3))
    extra = [ins[i] if i < len(ins) else None for i in range(3, 7)]
    mask, past_k, past_v, nonpad = (None if t is None else imp.operand(node, ins, 3 + i)
                                    for i, t in enumerate(extra))
    rank = q.type.rank
    if rank not in (3, 4) or k.type.rank != rank or v.type.rank != rank:
        raise OnnxImportError(f"{imp.where}: Q, K and V must be all 3-D or all 4-D, got "
                              f"{q.type}, {k.type}, {v.type}")
    if rank == 3:
        heads = (attrs.get("q_num_heads"), attrs.get("kv_num_heads"))
        if not all(heads):
            raise OnnxImportError(f"{imp.where}: 3-D inputs need the attributes q_num_heads "
                                  "and kv_num_heads")
        q, k, v = (_split_heads(imp, t, int(h)) for t, h in
                   ((q, heads[0]), (k, heads[1]), (v, heads[1])))
    if (past_k is None) != (past_v is None):
        raise OnnxImportError(f"{imp.where}: past_key and past_value go together")
    if past_k is not None and nonpad is not None:
        raise OnnxImportError(f"{imp.where}: nonpad_kv_seqlen cannot go with past_key")
    if past_k is not None:
        k = imp.node("concat", [past_k, k], {"axis": 2})
        v = imp.node("concat", [past_v, v], {"axis": 2})
    present_k, present_v = k, v
    hq, hk = q.type.shape[1], k.type.shape[1]
    if hq != hk:
        if not (isinstance(hq, int) and isinstance(hk, int) and hq % hk == 0
                and v.type.shape[1] == hk):
            raise OnnxImportError(f"{imp.where}: Q's {hq} heads are not a multiple of K's and "
                                  f"V's {hk}")
        k, v = (_repeat_heads(imp, t, hq // hk) for t in (k, v))
    softcap = float(attrs.get("softcap", 0.0) or 0.0)
    window = (int(attrs.get("left_window_size", -1)), int(attrs.get("right_window_size", -1)))
    want_qk = len(node.output) > 3 and bool(node.output[3])
    causal = bool(attrs.get("is_causal", 0))
    if mask is None and past_k is None and nonpad is None and softcap <= 0 and \
            window == (-1, -1) and not want_qk:
        out = {"causal": causal}
        if "scale" in attrs:
            out["scale"] = float(attrs["scale"])
        y, qk = imp.node("attention", [q, k, v], out), None
    else:
        past = past_k.type.shape[2] if past_k is not None else 0
        y, qk = _attention_spelled_out(imp, q, k, v, mask, nonpad, attrs, past, causal,
                                       softcap, window)
    if rank == 3:  # [B, H, S, Dv] -> [B, S, H * Dv]
        b, h, s, dv = y.type.shape
        y = imp.node("transpose", [y], {"perm": (0, 2, 1, 3)})
        y = imp.node("reshape", [y], {"shape": _writable_dims(imp, [b, s, h * dv])})
    return [y, present_k, present_v] + ([qk] if want_qk else [])


def _split_heads(imp, x: Value, heads: int) -> Value:
    """[B, S, heads * D] -> [B, heads, S, D]."""
    b, s, hidden = x.type.shape
    if heads <= 0 or not isinstance(hidden, int) or hidden % heads:
        raise OnnxImportError(f"{imp.where}: {x.type}'s last dim does not split into {heads} "
                              "heads")
    x = imp.node("reshape", [x], {"shape": _writable_dims(imp, [b, s, heads,
                                                                hidden // heads])})
    return imp.node("transpose", [x], {"perm": (0, 2, 1, 3)})


def _repeat_heads(imp, x: Value, times: int) -> Value:
    """[B, H, S, D] -> [B, H * times, S, D], each head repeated in place (h0, h0, h1, h1...)."""
    b, h, s, d = x.type.shape
    x = imp.node("unsqueeze", [x], {"axes": (2,)})
    x = imp.node("broadcast_to", [x], {"shape": _writable_dims(imp, [b, h, times, s, d])})
    return imp.node("reshape", [x], {"shape": _writable_dims(imp, [b, h * times, s, d])})


def _attention_spelled_out(imp, q, k, v, mask, nonpad, attrs, past: int, causal: bool,
                           softcap: float, window: tuple[int, int]):
    """Y and qk_matmul_output of ONNX Attention on 4-D q, k, v (k and v with their past and as
    many heads as q), as onnx.reference computes them."""
    dt = q.type.dtype
    sq, skv = q.type.shape[2], k.type.shape[2]
    if not (isinstance(sq, int) and isinstance(skv, int)):
        raise OnnxImportError(f"{imp.where}: masked attention over symbolic sequence lengths "
                              "is not supported")
    scale = attrs.get("scale")
    scale = 1 / math.sqrt(q.type.shape[3]) if scale is None else float(scale)
    root = imp.scalar(math.sqrt(scale), dt)  # q and k each scaled by its root, as ONNX
    kt = imp.node("transpose", [imp.node("mul", [k, root], {})], {"perm": (0, 1, 3, 2)})
    scores = imp.node("matmul", [imp.node("mul", [q, root], {}), kt], {})
    if softcap > 0:
        cap = imp.scalar(softcap, dt)
        scores = imp.node("mul", [imp.node("tanh", [imp.node("div", [scores, cap], {})], {}),
                                  cap], {})
    zero, ninf = imp.scalar(0.0, dt), imp.scalar(-math.inf, dt)
    bias, may_mask_rows = None, False
    if mask is not None:
        may_mask_rows = True
        if mask.type.dtype == "bool":
            mask = imp.node("where", [mask, zero, ninf], {})
        elif mask.type.dtype != dt:
            mask = imp.node("cast", [mask], {"dtype": dt})
        short = skv - mask.type.shape[-1]
        if isinstance(short, int) and short > 0:  # a mask shorter than the keys: -inf after
            r = mask.type.rank
            pads = (0,) * (2 * r - 1) + (short,)
            mask = imp.node("pad", [mask], {"pads": pads, "mode": "constant",
                                            "value": -math.inf})
        bias = mask
    i, j = np.arange(sq)[:, None], np.arange(skv)[None, :]
    left, right = window
    if nonpad is None:
        allowed = np.ones((sq, skv), dtype=bool)
        if causal:
            allowed &= j <= i + past
        if left >= 0:
            allowed &= i + past - j <= left
        if right >= 0:
            allowed &= j - i - past <= right
        if not allowed.all():
            may_mask_rows |= not allowed.any(axis=-1).all()
            from aotml.graph.ir import DTYPES
            term = imp.tensor(_T(const=np.where(allowed, 0.0, -np.inf).astype(DTYPES[dt])),
                              "attention_bias")
            bias = term if bias is None else imp.node("add", [bias, term], {})
    else:  # per batch: key j is valid when j < nonpad[b]; the query block ends there
        may_mask_rows = True
        b = q.type.shape[0]
        n = nonpad if nonpad.type.dtype == "i64" else imp.node("cast", [nonpad],
                                                               {"dtype": "i64"})
        n = imp.node("reshape", [n], {"shape": _writable_dims(imp, [b, 1, 1, 1])})
        e = (j - i + sq).astype(np.int64)[None, None]  # offset[b] = nonpad[b] - sq

        def const(a, name):
            return imp.tensor(_T(const=np.ascontiguousarray(a, dtype=np.int64)), name)
        conds = [imp.node("lt", [const(j[None, None], "key_index"), n], {})]
        if causal:  # j <= i + offset
            conds.append(imp.node("le", [const(e, "causal_limit"), n], {}))
        if left >= 0:  # i + offset - j <= left
            conds.append(imp.node("le", [n, const(e + left, "left_limit")], {}))
        if right >= 0:  # j - i - offset <= right
            conds.append(imp.node("le", [const(e - right, "right_limit"), n], {}))
        allowed = conds[0]
        for c in conds[1:]:
            allowed = imp.node("where", [allowed, c, imp.scalar(False, "bool")], {})
        term = imp.node("where", [allowed, zero, ninf], {})
        bias = term if bias is None else imp.node("add", [bias, term], {})
    mode = int(attrs.get("qk_matmul_output_mode", 0) or 0)
    biased = scores if bias is None else imp.node("add", [scores, bias], {})
    qk = biased if mode == 2 else scores
    precision = attrs.get("softmax_precision")
    sdt = dt
    if precision:
        sdt = imp.dtype(int(precision), f"{imp.where} softmax_precision") \
            if int(precision) != 11 else "f32"  # double: f32, aotml's widest float
    x = biased if sdt == dt else imp.node("cast", [biased], {"dtype": sdt})
    probs = imp.node("softmax", [x], {"axis": -1})
    if bias is not None and may_mask_rows:  # a row with no key to attend to is all 0
        top = imp.node("max", [bias], {"axis": (bias.type.rank - 1,), "keepdims": True})
        empty = imp.node("eq", [top, ninf], {})
        probs = imp.node("where", [empty, imp.scalar(0.0, sdt), probs], {})
    if mode == 3:
        qk = probs if sdt == dt else imp.node("cast", [probs], {"dtype": dt})
    if sdt != dt:
        probs = imp.node("cast", [probs], {"dtype": dt})
    return imp.node("matmul", [probs, v], {}), qk


@converter("Shape", "Size")
def _shape(imp, node, ins, attrs):
    x = imp.operand(node, ins, 0)
    # symbolic dims give an object array of ints and Syms, folded by symbolic_fold
    from aotml.onnx_import.symbolic_fold import symbolic_array
    shape = symbolic_array(x.type.shape)
    if node.op_type == "Size":
        return [np.asarray(math.prod(shape.tolist()), dtype=shape.dtype)]
    start, end = int(attrs.get("start", 0)), attrs.get("end")
    return [shape[start:None if end is None else int(end)]]


# ops aotml has no kernel for, which are fine on constants (shape computations)
@converter("ConstantOfShape", "Range", "Constant")
def _fold_only(imp, node, ins, attrs):
    raise OnnxImportError(f"{imp.where}: supported only on constant inputs (as a shape "
                          "computation folded at import)")


@converter("Tile")
def _tile(imp, node, ins, attrs):
    """x [d0, d1, ...] as [1, d0, 1, d1, ...], broadcast to [r0, d0, r1, d1, ...], merged."""
    x = imp.operand(node, ins, 0)
    reps = imp.ints(ins, 1, "repeats")
    rank = x.type.rank
    if len(reps) != rank or min(reps, default=1) < 1:
        raise OnnxImportError(f"{imp.where}: repeats {reps} do not fit {x.type} (one per dim, "
                              "each at least 1)")
    if all(r == 1 for r in reps):
        return [imp.node("copy", [x], {})]
    dims = list(x.type.shape)
    y = imp.node("unsqueeze", [x], {"axes": tuple(range(0, 2 * rank, 2))})
    y = imp.node("broadcast_to", [y], {"shape": _writable_dims(
        imp, [v for r, d in zip(reps, dims) for v in (r, d)])})
    return [imp.node("reshape", [y], {"shape": _writable_dims(
        imp, [r * d for r, d in zip(reps, dims)])})]


@converter("Floor", "Ceil")
def _round(imp, node, ins, attrs):
    """Through an integer: t = float(int(x)) (toward zero), then one step down (Floor, where
    t > x) or up (Ceil, where t < x); x itself where |x| is past the float's last fraction bit
    (already whole, or inf), or NaN."""
    x = imp.operand(node, ins, 0)
    dt = x.type.dtype
    whole = {"f32": 2.0 ** 23, "f16": 2.0 ** 10, "bf16": 2.0 ** 7}.get(dt)
    if whole is None:
        raise OnnxImportError(f"{imp.where}: {node.op_type} takes floats, got {x.type}")
    t = imp.node("cast", [imp.node("cast", [x], {"dtype": "i32"})], {"dtype": dt})
    one = imp.scalar(1.0, dt)
    if node.op_type == "Floor":
        r = imp.node("where", [imp.node("gt", [t, x], {}), imp.node("sub", [t, one], {}), t], {})
    else:
        r = imp.node("where", [imp.node("lt", [t, x], {}), imp.node("add", [t, one], {}), t], {})
    small = imp.node("lt", [imp.node("abs", [x], {}), imp.scalar(whole, dt)], {})
    return [imp.node("where", [small, r, x], {})]


_INTS = ("i32", "i64")


@converter("Div")
def _div(imp, node, ins, attrs):
    """Floats: `div`. Integers: the quotient truncated toward zero (C, and ONNX), exactly."""
    a, b = imp.operand(node, ins, 0), imp.operand(node, ins, 1)
    if a.type.dtype not in _INTS:
        return [imp.node("div", [a, b], {})]
    q, _ = _int_divmod(imp, a, b)
    return [q]


@converter("Mod")
def _mod(imp, node, ins, attrs):
    """fmod=1: the remainder of the truncated quotient (C's fmod, sign of a); fmod=0 (integers
    only in ONNX, floats as numpy.mod): of the floored one (sign of b)."""
    a, b = imp.operand(node, ins, 0), imp.operand(node, ins, 1)
    fmod = bool(attrs.get("fmod", 0))
    if a.type.dtype in _INTS:
        _, r = _int_divmod(imp, a, b)
        if not fmod:  # a nonzero remainder whose sign differs from b's moves by b
            zero = imp.scalar(0, a.type.dtype)
            differ = imp.node("ne", [imp.node("lt", [r, zero], {}),
                                     imp.node("lt", [b, zero], {})], {})
            move = imp.node("where", [imp.node("ne", [r, zero], {}), differ,
                                      imp.scalar(False, "bool")], {})
            r = imp.node("where", [move, imp.node("add", [r, b], {}), r], {})
        return [r]
    dt = a.type.dtype
    if dt not in ("f32", "f16", "bf16"):
        raise OnnxImportError(f"{imp.where}: Mod takes numbers, got {a.type}")
    # a - b * trunc(a / b); b = ±inf leaves a finite a as it is
    trunc = _float_trunc(imp, imp.node("div", [a, b], {}))
    r = imp.node("sub", [a, imp.node("mul", [b, trunc], {})], {})
    inf = imp.scalar(math.inf, dt)
    b_inf = imp.node("eq", [imp.node("abs", [b], {}), inf], {})
    a_finite = imp.node("lt", [imp.node("abs", [a], {}), inf], {})
    keep = imp.node("where", [b_inf, a_finite, imp.scalar(False, "bool")], {})
    r = imp.node("where", [keep, a, r], {})
    if fmod:
        return [r]
    zero = imp.scalar(0.0, dt)
    b_neg = imp.node("lt", [b, zero], {})
    differ = imp.node("ne", [imp.node("lt", [r, zero], {}), b_neg], {})
    move = imp.node("where", [imp.node("ne", [r, zero], {}), differ,
                              imp.scalar(False, "bool")], {})
    r = imp.node("where", [move, imp.node("add", [r, b], {}), r], {})
    # a zero remainder takes b's sign
    signed_zero = imp.node("where", [b_neg, imp.scalar(-0.0, dt), zero], {})
    return [imp.node("where", [imp.node("eq", [r, zero], {}), signed_zero, r], {})]


def _float_trunc(imp, x: Value) -> Value:
    """x rounded toward zero (through i32 where |x| has fraction bits; else x: whole, inf or
    NaN)."""
    dt = x.type.dtype
    whole = {"f32": 2.0 ** 23, "f16": 2.0 ** 10, "bf16": 2.0 ** 7}[dt]
    t = imp.node("cast", [imp.node("cast", [x], {"dtype": "i32"})], {"dtype": dt})
    small = imp.node("lt", [imp.node("abs", [x], {}), imp.scalar(whole, dt)], {})
    return imp.node("where", [small, t, x], {})


def _int_divmod(imp, a: Value, b: Value) -> tuple[Value, Value]:
    """(a / b truncated toward zero, a - that * b) for integer tensors, exactly, without an
    integer division op: a float32 estimate of the quotient, refined three times on the
    (exact, i64) remainder, then set right by one step where the remainder is out of range.
    Division by zero gives some value, as ONNX leaves it undefined."""
    dt = a.type.dtype
    if b.type.dtype != dt:
        raise OnnxImportError(f"{imp.where}: operands of different dtypes ({a.type}, {b.type})")
    if dt != "i64":
        a, b = (imp.node("cast", [v], {"dtype": "i64"}) for v in (a, b))
    fb = imp.node("cast", [b], {"dtype": "f32"})

    def estimate(n: Value) -> Value:
        f = imp.node("div", [imp.node("cast", [n], {"dtype": "f32"}), fb], {})
        return imp.node("cast", [f], {"dtype": "i64"})
    q = estimate(a)
    for _ in range(3):
        r = imp.node("sub", [a, imp.node("mul", [q, b], {})], {})
        q = imp.node("add", [q, estimate(r)], {})
    zero, one = imp.scalar(0, "i64"), imp.scalar(1, "i64")
    a_neg = imp.node("lt", [a, zero], {})
    t = imp.node("where", [a_neg, imp.scalar(-1, "i64"), one], {})  # a's sign
    step = imp.node("where", [imp.node("eq", [a_neg, imp.node("lt", [b, zero], {})], {}), one,
                              imp.scalar(-1, "i64")], {})  # the quotient's sign
    size = imp.node("mul", [t, imp.node("abs", [b], {})], {})  # |b| with a's sign
    r = imp.node("sub", [a, imp.node("mul", [q, b], {})], {})
    for _ in range(2):
        # |r| >= |b| on a's side: one more; r on the other side of zero: one less
        rt = imp.node("mul", [r, t], {})
        over = imp.node("ge", [rt, imp.node("abs", [b], {})], {})
        under = imp.node("lt", [rt, zero], {})
        q = imp.node("where", [over, imp.node("add", [q, step], {}), q], {})
        r = imp.node("where", [over, imp.node("sub", [r, size], {}), r], {})
        q = imp.node("where", [under, imp.node("sub", [q, step], {}), q], {})
        r = imp.node("where", [under, imp.node("add", [r, size], {}), r], {})
    if dt != "i64":
        q, r = (imp.node("cast", [v], {"dtype": dt}) for v in (q, r))
    return q, r


@converter("Pow")
def _pow(imp, node, ins, attrs):
    """Float base: `pow`, an integer exponent cast to the base's dtype. Integer base, float
    exponent: the float power truncated (as ONNX's reference). Integers to integer powers:
    exactly, by squaring (wrapping as numpy) over the exponent's bits (exact for exponents
    below 2^24; a negative one gives 1)."""
    a, b = imp.operand(node, ins, 0), imp.operand(node, ins, 1)
    da, db = a.type.dtype, b.type.dtype
    if da not in _INTS:
        if db != da:
            b = imp.node("cast", [b], {"dtype": da})
        return [imp.node("pow", [a, b], {})]
    if db not in _INTS:
        f = imp.node("pow", [imp.node("cast", [a], {"dtype": db}), b], {})
        return [imp.node("cast", [f], {"dtype": da})]
    const = ins[1].const if ins[1] is not None else None
    if const is not None and const.size == 1 and 0 <= int(np.ravel(const)[0]) <= 64:
        e = int(np.ravel(const)[0])  # a known small exponent: multiply out
        out, square = imp.scalar(1, da), a
        while e:
            if e & 1:
                out = imp.node("mul", [out, square], {})
            e >>= 1
            if e:
                square = imp.node("mul", [square, square], {})
        shape = _broadcast(imp, a, b)
        if tuple(out.type.shape) != shape:
            out = imp.node("broadcast_to", [out], {"shape": _writable_dims(imp, list(shape))})
        return [out]
    # each bit of the exponent found on its own (from its float32 value: exact below 2^24),
    # a chain of squares a^(2^k), and the product of those whose bit is set
    e = imp.node("cast", [b], {"dtype": "f32"})
    one, out, square = imp.scalar(1, da), None, a
    for k in range(24):
        # bit k = floor(e / 2^k) - 2 floor(e / 2^(k+1)), the floors through i32 (e >= 0)
        hi, lo = (imp.node("cast", [imp.node("mul", [e, imp.scalar(2.0 ** -j, "f32")], {})],
                           {"dtype": "i32"}) for j in (k + 1, k))
        bit = imp.node("ne", [lo, imp.node("mul", [hi, imp.scalar(2, "i32")], {})], {})
        term = imp.node("where", [bit, square, one], {})
        out = term if out is None else imp.node("mul", [out, term], {})
        if k < 23:
            square = imp.node("mul", [square, square], {})
    return [imp.node("where", [imp.node("lt", [e, imp.scalar(0.0, "f32")], {}), one, out], {})]


def _broadcast(imp, a: Value, b: Value) -> tuple:
    from aotml.ops.core import broadcast_shapes
    shape = broadcast_shapes(tuple(a.type.shape), tuple(b.type.shape))
    if shape is None:
        raise OnnxImportError(f"{imp.where}: {a.type} and {b.type} do not broadcast")
    return tuple(shape)
