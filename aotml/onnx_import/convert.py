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
    OnnxImportError,
    dtype_name,
    onnx_dtypes,
    read_model,
    require_onnx,
    tensor_to_array,
)

MIN_OPSET = 13
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
        self.taken: set[str] = set()
        self.graph = Graph(legal_name(name, set(), "model"), [], [], [], [])
        self.env: dict[str, _T] = {}
        self.params: dict[int, Value] = {}  # id(constant array) -> its param
        self._keep: list[np.ndarray] = []
        opsets = {o.domain: o.version for o in model.opset_import}
        self.opset = opsets.get("", opsets.get("ai.onnx", 0))
        if self.opset < MIN_OPSET:
            raise OnnxImportError(f"the model uses ONNX opset {self.opset}; aotml imports "
                                  f"opset {MIN_OPSET} and newer",
                                  hint="convert it with onnx.version_converter.convert_version"
                                       f"(model, {MIN_OPSET})")

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
        if not hasattr(self, "_symbols"):
            self._symbols: dict[str, str] = {}
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
        for t in ins:
            if t is not None and t.const.size > FOLD_MAX_ELEMENTS:
                break
        else:
            if node.op_type in ("ConstantOfShape", "Expand", "Range", "Tile"):
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
        if node.op_type in ("ConstantOfShape", "Expand"):
            shape = consts[-1] if node.op_type == "Expand" else consts[0]
            guess = math.prod(int(d) for d in np.ravel(shape)) if shape.size else 1
        elif node.op_type == "Range" and len(consts) == 3:
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
            dtypes = {np.dtype(d): n for n, d in onnx_dtypes().values()}
            if array.dtype not in dtypes:
                raise OnnxImportError(f"{self.where}: constant '{name}' has dtype "
                                      f"{array.dtype}, which aotml does not support")
            if 0 in array.shape:
                raise OnnxImportError(f"{self.where}: constant '{name}' has no elements "
                                      f"(shape {array.shape}); empty tensors are not supported")
            value = Value(legal_name(name, self.taken, "c"),
                          TensorType(dtypes[array.dtype], tuple(int(d) for d in array.shape)))
            self.graph.params.append(Param(value, np.ascontiguousarray(array)))
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

    def ints(self, ins, k: int, what: str, required: bool = True) -> tuple[int, ...] | None:
        c = self.const_input(ins, k, what, required)
        if c is None:
            return None
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
        value = Value(legal_name(label or f"{self.prefix}_{op}", self.taken, "t"), ty)
        self.fresh.add(value.uid)
        self.graph.nodes.append(Node(op, tuple(inputs), tuple(sorted(bound.items())), value))
        return value


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
    "Sqrt", "Max", "Min", "Abs", "Flatten",
})


def converter(*names: str):
    def register(fn: Converter) -> Converter:
        for n in names:
            CONVERTERS[n] = fn
        return fn
    return register


_SIMPLE = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Pow": "pow",
           "Equal": "eq", "Less": "lt", "LessOrEqual": "le", "Greater": "gt",
           "GreaterOrEqual": "ge", "Neg": "neg", "Abs": "abs", "Exp": "exp", "Log": "log",
           "Sqrt": "sqrt", "Tanh": "tanh", "Sigmoid": "sigmoid", "Relu": "relu", "Erf": "erf",
           "Identity": "copy", "Where": "where"}


@converter(*_SIMPLE)
def _simple(imp, node, ins, attrs):
    return [imp.node(_SIMPLE[node.op_type], [imp.operand(node, ins, k)
                                             for k in range(len(ins))], {})]


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
            bounds[key] = float(np.ravel(c)[0])
    return [imp.node("clip", [x], bounds)]


@converter("Dropout")
def _dropout(imp, node, ins, attrs):
    training = imp.const_input(ins, 2, "training_mode", required=False)
    if training is not None and bool(np.ravel(training)[0]):
        raise OnnxImportError(f"{imp.where}: dropout in training mode is not supported")
    if len([o for o in node.output if o]) > 1:
        raise OnnxImportError(f"{imp.where}: its mask output is not supported")
    return [imp.node("copy", [imp.operand(node, ins, 0)], {})]


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
    if attrs.get("select_last_index", 0):
        raise OnnxImportError(f"{imp.where}: select_last_index=1 is not supported (aotml "
                              "takes the first index of ties)")
    op = "argmax" if node.op_type == "ArgMax" else "argmin"
    return [imp.node(op, [imp.operand(node, ins, 0)],
                     {"axis": int(attrs.get("axis", 0)),
                      "keepdims": bool(attrs.get("keepdims", 1))})]


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
    return [imp.node("layer_norm", [x, scale, bias],
                     {"axis": int(attrs.get("axis", -1)),
                      "eps": float(attrs.get("epsilon", 1e-5))})]


@converter("RMSNormalization")
def _rms_norm(imp, node, ins, attrs):
    return [imp.node("rms_norm", [imp.operand(node, ins, 0), imp.operand(node, ins, 1)],
                     {"axis": int(attrs.get("axis", -1)),
                      "eps": float(attrs.get("epsilon", 1e-5))})]


@converter("BatchNormalization")
def _batch_norm(imp, node, ins, attrs):
    if attrs.get("training_mode", 0):
        raise OnnxImportError(f"{imp.where}: training mode is not supported (inference only)")
    return [imp.node("batch_norm", [imp.operand(node, ins, k) for k in range(5)],
                     {"eps": float(attrs.get("epsilon", 1e-5))})]


@converter("Reshape")
def _reshape(imp, node, ins, attrs):
    x = imp.operand(node, ins, 0)
    shape = list(imp.ints(ins, 1, "shape"))
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
    axis = int(attrs.get("axis", 1)) % (x.type.rank + 1) if x.type.rank else 0
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
    shape = imp.ints(ins, 1, "shape")
    from aotml.ops.core import broadcast_shapes
    target = broadcast_shapes(tuple(x.type.shape), shape)  # ONNX Expand broadcasts both ways
    if target is None:
        raise OnnxImportError(f"{imp.where}: {x.type} does not broadcast with {shape}")
    if tuple(target) == tuple(x.type.shape):
        return [imp.node("copy", [x], {})]
    return [imp.node("broadcast_to", [x], {"shape": _writable_dims(imp, list(target))})]


@converter("Concat")
def _concat(imp, node, ins, attrs):
    values = [imp.operand(node, ins, k) for k in range(len(ins))]
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
        chunk = -(-dim // n)
        sizes = tuple(min(chunk, dim - k * chunk) for k in range(n))
    if isinstance(dim, Sym) or sum(sizes) != dim or min(sizes) < 0:
        raise OnnxImportError(f"{imp.where}: split sizes {sizes} do not add up to dim {axis} "
                              f"of {x.type}")
    outs, start = [], 0
    for size in sizes:
        if size == 0:
            raise OnnxImportError(f"{imp.where}: an empty split part is not supported")
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
        full = [0] * (2 * rank)
        for k, a in enumerate(axes):
            a %= rank
            full[a], full[rank + a] = pads[k], pads[len(axes) + k]
        pads = tuple(full)
    out = {"pads": pads, "mode": mode}
    if value is not None and value.size:
        out["value"] = float(np.ravel(value)[0])
    return [imp.node("pad", [x], out)]


@converter("Squeeze")
def _squeeze(imp, node, ins, attrs):
    x = imp.operand(node, ins, 0)
    axes = imp.ints(ins, 1, "axes", required=False) or ()
    return [imp.node("squeeze", [x], {"axes": axes})]


@converter("Unsqueeze")
def _unsqueeze(imp, node, ins, attrs):
    x = imp.operand(node, ins, 0)
    return [imp.node("unsqueeze", [x], {"axes": imp.ints(ins, 1, "axes")})]


def _spatial(imp, attrs, x: TensorType, kernel) -> dict:
    if x.rank != 4:
        raise OnnxImportError(f"{imp.where}: only 2-D (NCHW) inputs are supported, got {x}")
    out = {}
    if "strides" in attrs:
        out["stride"] = tuple(int(s) for s in attrs["strides"])
    if "dilations" in attrs:
        out["dilation"] = tuple(int(s) for s in attrs["dilations"])
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        stride = out.get("stride", (1, 1))
        dil = out.get("dilation", (1, 1))
        pads = [0, 0, 0, 0]
        for k in range(2):
            size = x.shape[2 + k]
            if isinstance(size, Sym):
                raise OnnxImportError(f"{imp.where}: auto_pad over a symbolic dim")
            total = max(0, (-(-size // stride[k]) - 1) * stride[k]
                        + (kernel[k] - 1) * dil[k] + 1 - size)
            small, large = total // 2, total - total // 2
            lo, hi = (small, large) if auto == "SAME_UPPER" else (large, small)
            pads[k], pads[2 + k] = lo, hi
        out["padding"] = tuple(pads)
    elif auto == "VALID":
        out["padding"] = (0, 0, 0, 0)
    elif "pads" in attrs:
        out["padding"] = tuple(int(p) for p in attrs["pads"])
    return out


@converter("Conv")
def _conv(imp, node, ins, attrs):
    x, w = imp.operand(node, ins, 0), imp.operand(node, ins, 1)
    kernel = tuple(int(k) for k in attrs.get("kernel_shape", w.type.shape[2:]))
    args = [x, w] + ([imp.operand(node, ins, 2)] if len(ins) > 2 and ins[2] is not None else [])
    spatial = _spatial(imp, attrs, x.type, kernel)
    return [imp.node("conv2d", args, {**spatial, "groups": int(attrs.get("group", 1))})]


@converter("MaxPool", "AveragePool")
def _pool(imp, node, ins, attrs):
    x = imp.operand(node, ins, 0)
    if attrs.get("ceil_mode", 0):
        raise OnnxImportError(f"{imp.where}: ceil_mode=1 is not supported")
    if node.op_type == "MaxPool" and len([o for o in node.output if o]) > 1:
        raise OnnxImportError(f"{imp.where}: the Indices output is not supported")
    if attrs.get("storage_order", 0):
        raise OnnxImportError(f"{imp.where}: storage_order=1 is not supported")
    kernel = tuple(int(k) for k in attrs["kernel_shape"])
    spatial = _spatial(imp, attrs, x.type, kernel)
    spatial["kernel"] = kernel
    if "stride" not in spatial:
        spatial["stride"] = (1, 1)  # ONNX's default stride is 1, aotml's the kernel
    if node.op_type == "MaxPool":
        return [imp.node("max_pool2d", [x], spatial)]
    spatial.pop("dilation", None) if spatial.get("dilation", (1, 1)) == (1, 1) else None
    if "dilation" in spatial:
        raise OnnxImportError(f"{imp.where}: dilated average pooling is not supported")
    spatial["count_include_pad"] = bool(attrs.get("count_include_pad", 0))
    return [imp.node("avg_pool2d", [x], spatial)]


@converter("GlobalAveragePool")
def _global_avg_pool(imp, node, ins, attrs):
    return [imp.node("global_avg_pool", [imp.operand(node, ins, 0)], {})]


@converter("Attention")
def _attention(imp, node, ins, attrs):
    q, k, v = (imp.operand(node, ins, i) for i in range(3))
    if len(ins) > 3 and any(t is not None for t in ins[3:]):
        raise OnnxImportError(f"{imp.where}: attention masks and past key/values are not "
                              "supported")
    if len([o for o in node.output if o]) > 1:
        raise OnnxImportError(f"{imp.where}: only the first output (Y) is supported")
    if q.type.rank != 4 or k.type.rank != 4 or v.type.rank != 4:
        raise OnnxImportError(f"{imp.where}: only 4-D (batch, heads, sequence, size) inputs "
                              "are supported")
    if q.type.shape[1] != k.type.shape[1]:
        raise OnnxImportError(f"{imp.where}: grouped-query attention (q has "
                              f"{q.type.shape[1]} heads, k {k.type.shape[1]}) is not supported")
    for key in ("softcap", "qk_matmul_output_mode"):
        if attrs.get(key, 0):
            raise OnnxImportError(f"{imp.where}: attribute {key} is not supported")
    out = {"causal": bool(attrs.get("is_causal", 0))}
    if "scale" in attrs:
        out["scale"] = float(attrs["scale"])
    return [imp.node("attention", [q, k, v], out)]


@converter("Shape", "Size")
def _shape(imp, node, ins, attrs):
    x = imp.operand(node, ins, 0)
    if not x.type.is_static:
        raise OnnxImportError(f"{imp.where}: the shape of {x.type} depends on its symbolic "
                              "dims; shape computations at run time are not supported",
                              hint="export the model with static shapes for these dims")
    shape = np.asarray(x.type.shape, dtype=np.int64)
    if node.op_type == "Size":
        return [np.asarray(x.type.numel, dtype=np.int64)]
    start, end = int(attrs.get("start", 0)), attrs.get("end")
    return [shape[start:None if end is None else int(end)]]


# ops aotml has no kernel for, which are fine on constants (shape computations)
@converter("ConstantOfShape", "Range", "Tile", "Not", "Floor", "Ceil", "Constant")
def _fold_only(imp, node, ins, attrs):
    raise OnnxImportError(f"{imp.where}: supported only on constant inputs (as a shape "
                          "computation folded at import)")
