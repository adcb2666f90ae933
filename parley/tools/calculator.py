"""A safe arithmetic evaluator for the ``calculator`` tool: Python's expression syntax, a tiny whitelist.

The expression is parsed with ``ast`` and walked here; nothing is ever compiled to code or ``eval``-ed.
Only numbers, ``+ - * / // % **``, unary signs, parentheses and the functions and constants below are
understood. Every step is bounded — expression length, nesting depth, integer size (checked *before* a
power is computed), factorial and rounding arguments — so no input can burn CPU or memory: a model
controls the input, and a slow evaluation could not even be timed out (it never awaits).
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

from parley.tools.base import ToolError

Number = int | float

MAX_EXPRESSION_CHARS = 1000
MAX_DEPTH = 250  # a flat chain like 1+1+…+1 is as deep as it is long
MAX_INT_BITS = 4096  # about 1233 decimal digits
MAX_FACTORIAL = 300
MAX_ROUND_DIGITS = 100
MAX_FUNCTION_ARGS = 64
MAX_QUOTED_CHARS = 40  # of the refused part of an expression, quoted back in the error

CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e, "tau": math.tau}

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
_DIVISIONS = (ast.Div, ast.FloorDiv, ast.Mod)


class CalculatorError(ToolError):
    """Why an expression cannot be evaluated, in words the model can act on."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="invalid_expression")


class _NotAllowed(Exception):
    """A part of the expression the calculator refuses; ``evaluate`` quotes it from the source."""

    def __init__(self, node: ast.AST, what: str) -> None:
        super().__init__(what)
        self.node, self.what = node, what

    def sentence(self, source: str) -> str:
        quoted = _quoted(source, self.node)
        return f"{self.what}{f' ({quoted})' if quoted else ''} is not allowed."


def evaluate(expression: str) -> Number:
    """The value of an arithmetic expression, or ``CalculatorError`` saying what is wrong with it."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CalculatorError(f"The expression is too long (at most {MAX_EXPRESSION_CHARS} characters).")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise CalculatorError(f"The expression is not valid: {exc.msg}.") from None
    except (RecursionError, MemoryError, ValueError):
        raise CalculatorError("The expression is nested too deeply.") from None
    try:
        return _eval(tree.body, 0)
    except _NotAllowed as refused:
        raise CalculatorError(refused.sentence(expression.strip())) from None


def format_number(value: Number) -> str:
    """Integers exactly; floats as the shortest text that reads back as the same float."""
    return str(value) if isinstance(value, int) else repr(value)


def _eval(node: ast.expr, depth: int) -> Number:
    if depth > MAX_DEPTH:
        raise CalculatorError("The expression is nested too deeply.")
    if isinstance(node, ast.Constant):
        return _literal(node.value)
    if isinstance(node, ast.Name):
        if node.id in CONSTANTS:
            return CONSTANTS[node.id]
        hint = " (it is a function: call it)" if node.id in FUNCTIONS else ""
        raise CalculatorError(f"Unknown name {node.id!r}{hint}. Known constants: {', '.join(CONSTANTS)}.")
    if isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, ast.UAdd | ast.USub):
            raise _NotAllowed(node, _describe(node.op))
        operand = _eval(node.operand, depth + 1)
        return operand if isinstance(node.op, ast.UAdd) else -operand
    if isinstance(node, ast.BinOp):
        if type(node.op) not in _BINARY and not isinstance(node.op, ast.Pow | ast.BitXor):
            raise _NotAllowed(node, _describe(node.op))
        return _binary(node.op, _eval(node.left, depth + 1), _eval(node.right, depth + 1))
    if isinstance(node, ast.Call):
        return _call(node, depth)
    raise _NotAllowed(node, _describe(node))


def _literal(value: object) -> Number:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CalculatorError(f"Only numbers are allowed, not {type(value).__name__} values.")
    return _checked(value)


def _binary(op: ast.operator, left: Number, right: Number) -> Number:
    if isinstance(op, ast.Pow):
        return _power(left, right)
    if isinstance(op, ast.BitXor):
        raise CalculatorError("'^' is not supported: write powers with '**'.")
    if isinstance(op, _DIVISIONS) and right == 0:
        raise CalculatorError("Division by zero.")
    try:
        return _checked(_BINARY[type(op)](left, right))
    except OverflowError:
        raise CalculatorError("The result is too large.") from None


def _power(base: Number, exponent: Number) -> Number:
    """``base ** exponent``, refusing results too large *before* computing them."""
    try:
        if isinstance(base, int) and isinstance(exponent, int):
            if exponent < 0:
                if base == 0:
                    raise CalculatorError("Division by zero (zero to a negative power).")
                return _checked(float(base) ** exponent)
            if abs(base) > 1 and (abs(base).bit_length() - 1) * exponent > MAX_INT_BITS:
                raise CalculatorError(_too_large())
            return _checked(base**exponent)
        # math.pow stays real: a negative base with a fractional exponent is a domain error, not complex.
        return _checked(math.pow(base, exponent))
    except OverflowError:
        raise CalculatorError(_too_large()) from None
    except ValueError:
        raise CalculatorError(
            "Math domain error in '**' (a negative number to a fractional power?)."
        ) from None
    except ZeroDivisionError:
        raise CalculatorError("Division by zero (zero to a negative power).") from None


def _call(node: ast.Call, depth: int) -> Number:
    if not isinstance(node.func, ast.Name):
        # os.system(…), f[0](…), (1)(…): the callee is refused for what it is.
        raise _NotAllowed(node.func, _describe(node.func, "Calling anything but a function"))
    name = node.func.id
    if name not in FUNCTIONS:
        raise CalculatorError(f"Unknown function {name!r}. Known functions: {', '.join(FUNCTIONS)}.")
    if node.keywords or any(isinstance(arg, ast.Starred) for arg in node.args):
        raise CalculatorError(f"{name}() takes plain positional arguments only.")
    function, least, most = FUNCTIONS[name]
    if not least <= len(node.args) <= most:
        count = str(least) if least == most else f"{least} to {most}"
        raise CalculatorError(f"{name}() takes {count} argument{'s' if most > 1 else ''}.")
    args = [_eval(arg, depth + 1) for arg in node.args]
    try:
        return _checked(function(*args))
    except CalculatorError:
        raise
    except OverflowError:
        raise CalculatorError(f"{name}(): the result is too large.") from None
    except ZeroDivisionError:
        raise CalculatorError(f"{name}(): division by zero.") from None
    except (ValueError, TypeError) as exc:
        raise CalculatorError(f"{name}(): {exc}.") from None


def _checked(value: Any) -> Number:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CalculatorError("The result is not a real number.")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise CalculatorError(_too_large())
    if isinstance(value, float) and not math.isfinite(value):
        raise CalculatorError("The result is not a finite number.")
    return value


def _too_large() -> str:
    return f"The result is too large (integers are limited to {MAX_INT_BITS} bits, about 1233 digits)."


# What each refused kind of syntax is called in an error: "Attribute access (os.system) is not allowed."
_KINDS = {
    "Attribute": "Attribute access",
    "Subscript": "Indexing",
    "Slice": "Slicing",
    "Compare": "A comparison",
    "BoolOp": "The operator and/or",
    "IfExp": "A conditional expression",
    "Lambda": "A lambda",
    "NamedExpr": "Assignment with :=",
    "List": "A list",
    "Tuple": "A tuple",
    "Set": "A set",
    "Dict": "A dictionary",
    "ListComp": "A comprehension",
    "SetComp": "A comprehension",
    "DictComp": "A comprehension",
    "GeneratorExp": "A generator expression",
    "JoinedStr": "An f-string",
    "Starred": "Unpacking with *",
    "Await": "await",
    "Yield": "yield",
    "YieldFrom": "yield",
    "BitAnd": "The operator '&'",
    "BitOr": "The operator '|'",
    "LShift": "The operator '<<'",
    "RShift": "The operator '>>'",
    "MatMult": "The operator '@'",
    "Invert": "The operator '~'",
    "Not": "The operator 'not'",
}


def _describe(node: ast.AST, otherwise: str = "This kind of expression") -> str:
    return _KINDS.get(type(node).__name__, otherwise)


def _quoted(source: str, node: ast.AST) -> str:
    """The refused part as written, on one line and clipped: the model sees what to rewrite."""
    text = " ".join((ast.get_source_segment(source, node) or "").split())
    return text if len(text) <= MAX_QUOTED_CHARS else text[: MAX_QUOTED_CHARS - 1] + "…"


def _factorial(n: Number) -> int:
    if isinstance(n, float):
        if not n.is_integer():
            raise CalculatorError("factorial() needs a whole number.")
        n = int(n)
    if not 0 <= n <= MAX_FACTORIAL:
        raise CalculatorError(f"factorial() takes a whole number from 0 to {MAX_FACTORIAL}.")
    return math.factorial(n)


def _round(x: Number, digits: Number = 0) -> Number:
    if not isinstance(digits, int) or abs(digits) > MAX_ROUND_DIGITS:
        raise CalculatorError(
            f"round() takes a whole number of digits from -{MAX_ROUND_DIGITS} to {MAX_ROUND_DIGITS}."
        )
    return round(x) if digits == 0 else round(x, digits)


def _log(x: Number, base: Number | None = None) -> float:
    return math.log(x) if base is None else math.log(x, base)


# name → (function, fewest arguments, most arguments)
FUNCTIONS: dict[str, tuple[Callable[..., Any], int, int]] = {
    "abs": (abs, 1, 1),
    "round": (_round, 1, 2),
    "floor": (math.floor, 1, 1),
    "ceil": (math.ceil, 1, 1),
    "min": (min, 2, MAX_FUNCTION_ARGS),
    "max": (max, 2, MAX_FUNCTION_ARGS),
    "sqrt": (math.sqrt, 1, 1),
    "cbrt": (math.cbrt, 1, 1),
    "exp": (math.exp, 1, 1),
    "log": (_log, 1, 2),
    "log2": (math.log2, 1, 1),
    "log10": (math.log10, 1, 1),
    "sin": (math.sin, 1, 1),
    "cos": (math.cos, 1, 1),
    "tan": (math.tan, 1, 1),
    "asin": (math.asin, 1, 1),
    "acos": (math.acos, 1, 1),
    "atan": (math.atan, 1, 1),
    "atan2": (math.atan2, 2, 2),
    "sinh": (math.sinh, 1, 1),
    "cosh": (math.cosh, 1, 1),
    "tanh": (math.tanh, 1, 1),
    "hypot": (math.hypot, 1, MAX_FUNCTION_ARGS),
    "degrees": (math.degrees, 1, 1),
    "radians": (math.radians, 1, 1),
    "factorial": (_factorial, 1, 1),
}
