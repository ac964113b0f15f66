"""Safe formulas in sigma from config files: parsed to a whitelisted AST, never `eval`ed (NumPy, float64)."""
from __future__ import annotations

import ast
import math
from typing import Callable, Mapping

import numpy as np
from scipy import special

MAX_LENGTH = 500
MAX_NODES = 200
MAX_EXPONENT = 64.0

FUNCTIONS: dict[str, Callable[..., np.ndarray]] = {
    "exp": np.exp, "log": np.log, "log1p": np.log1p, "expm1": np.expm1,
    "sqrt": np.sqrt, "abs": np.abs,
    "erf": special.erf, "erfc": special.erfc, "erfinv": special.erfinv,
    "sigmoid": special.expit, "tanh": np.tanh, "sinh": np.sinh, "cosh": np.cosh,
    "sech": lambda x: 1.0 / np.cosh(x),
    "sin": np.sin, "cos": np.cos,
    "minimum": np.minimum, "maximum": np.maximum,
}
ARITY = {"minimum": 2, "maximum": 2}
CONSTANTS = {"pi": math.pi, "e": math.e}
BINARY = {
    ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply, ast.Div: np.divide, ast.Pow: np.power,
}


class FormulaError(ValueError):
    """A formula string uses something outside the whitelist."""


Node = Callable[[np.ndarray], np.ndarray]


def compile_formula(text: str, params: Mapping[str, float] | None = None, variable: str = "sigma") -> Node:
    """Compile `text` (arithmetic in `variable`, `params`, numbers and FUNCTIONS) to a float64 array function.

    Floating-point warnings are silenced: a NaN, inf or negative value is the caller's to check.
    """
    if not isinstance(text, str):
        raise FormulaError(f"formula must be a string, got {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise FormulaError(f"formula is {len(text)} characters long (at most {MAX_LENGTH})")
    params = dict(params or {})
    for key, value in params.items():
        if not isinstance(key, str) or not key.isidentifier() or key in FUNCTIONS or key == variable:
            raise FormulaError(f"parameter name {key!r} is not allowed")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise FormulaError(f"parameter {key!r} must be a finite number, got {value!r}")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as err:
        raise FormulaError(f"formula {text!r} is not valid arithmetic: {err.msg}") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise FormulaError(f"formula {text!r} has more than {MAX_NODES} syntax nodes")
    names = {**CONSTANTS, **{k: float(v) for k, v in params.items()}}
    node = _build(tree.body, text, names, variable)

    def formula(s: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):
            return np.asarray(node(np.asarray(s, dtype=np.float64)), dtype=np.float64)

    return formula


def _constant_value(node: ast.AST) -> float | None:
    """Value of a (possibly negated) numeric literal, else None."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        inner = _constant_value(node.operand)
        return None if inner is None else (-inner if isinstance(node.op, ast.USub) else inner)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return float(node.value)
    return None


def _build(node: ast.AST, text: str, names: dict[str, float], variable: str) -> Node:
    def fail(what: str) -> FormulaError:
        return FormulaError(f"formula {text!r}: {what} is not allowed (allowed: numbers, {variable}, "
                            f"{', '.join(sorted(names))}, + - * / **, and {', '.join(sorted(FUNCTIONS))})")

    if isinstance(node, ast.Constant):
        if type(node.value) not in (int, float):
            raise fail(f"the literal {node.value!r}")
        try:
            value = float(node.value)
        except OverflowError:
            raise fail("a number this large") from None
        return lambda s: np.full(np.shape(s), value)
    if isinstance(node, ast.Name):
        if node.id == variable:
            return lambda s: s
        if node.id in names:
            value = names[node.id]
            return lambda s: np.full(np.shape(s), value)
        raise FormulaError(f"formula {text!r}: unknown name {node.id!r} (declare it under params)")
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = _build(node.operand, text, names, variable)
        return (lambda s: -operand(s)) if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
        if isinstance(node.op, ast.Pow):
            # Exponents are bounded literals or power-free expressions: no 9**9**9 towers.
            exponent = _constant_value(node.right)
            if exponent is not None and abs(exponent) > MAX_EXPONENT:
                raise fail(f"an exponent of {exponent:g} (|exponent| <= {MAX_EXPONENT:g})")
            if exponent is None and any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.Pow)
                                        for n in ast.walk(node.right)):
                raise fail("a power inside an exponent")
        left = _build(node.left, text, names, variable)
        right = _build(node.right, text, names, variable)
        op = BINARY[type(node.op)]
        return lambda s: op(left(s), right(s))
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            raise fail(f"the call {ast.unparse(node.func)}(...)")
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            raise fail("keyword or starred arguments")
        arity = ARITY.get(node.func.id, 1)
        if len(node.args) != arity:
            raise FormulaError(f"formula {text!r}: {node.func.id} takes {arity} argument(s)")
        fn = FUNCTIONS[node.func.id]
        args = [_build(a, text, names, variable) for a in node.args]
        return lambda s: fn(*(a(s) for a in args))
    raise fail(f"'{type(node).__name__}' syntax")
