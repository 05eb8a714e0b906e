"""The op registry: every op is defined once, with its attributes, shape/dtype rule, numpy
reference and lowering to the loop IR. Importing this package registers the built-in ops."""

from aotml.ops import conv, core, elementwise, nn, shape  # noqa: F401,E402  (registers the ops)
from aotml.ops.registry import REGISTRY, Attr, OpDef, OpTypeError, register

__all__ = ["REGISTRY", "Attr", "OpDef", "OpTypeError", "register"]
