"""Size expressions, in zram-generator's grammar: `ram / 2`, `min(ram / 2, 4G)`, `(ram - 1G) * 3/4`.

    expr    := term (("+" | "-") term)*
    term    := unary (("*" | "/") unary)*
    unary   := ("+" | "-") unary | atom
    atom    := NUMBER [UNIT] | "ram" | ("min" | "max") "(" expr ("," expr)+ ")" | "(" expr ")"
    UNIT    := K | M | G | T (binary: 1K = 1024), optionally followed by "iB" or "B"; or B alone

`ram` is the machine's MemTotal. A small tokenizer and a recursive-descent parser evaluate the
text with exact fractions; nothing is handed to eval().

Every value is either a size (it has a unit, or comes from `ram`) or a plain number (`2`, `0.5`).
zram-generator counts everything in MiB, so its `min(ram / 2, 4096)` means 4096 MiB; here a plain
number at the top level is a count of bytes (`--size 4096` is one page, as it always was). To keep
a copied zram-generator expression from silently meaning something else, adding, subtracting or
comparing a size with a plain number is an error that asks for a unit (`4096M`). Sizes scale by
plain numbers (`ram * 0.25`, `ram / 4`) and a size divided by a size is a plain number.

An expression's result is rounded down to whole bytes and, unless the text is a single number
literal, down to whole 4 KiB pages (nobody can make `ram / 3` a page multiple by hand); a single
literal is taken exactly as written, so a typo such as `--size 1000` is still reported.

Errors are SizeError with a one-line message naming the column (1-based) and the token.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

PAGE_SIZE = 4096

#: binary multipliers, as the rest of zswapfs and zram-generator's "MiB" use them
UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_UNIT_RE = re.compile(r"^(?:([KMGT])(?:I?B)?|B)$", re.IGNORECASE)
_TOKEN_RE = re.compile(
    r"(?P<space>\s+)"
    r"|(?P<number>(?:\d+(?:\.\d*)?|\.\d+)(?:\s*[A-Za-z]+)?)"
    r"|(?P<name>[A-Za-z_][A-Za-z_0-9]*)"
    r"|(?P<op>[-+*/(),])"
)
FUNCTIONS = ("min", "max")
#: deepest nesting read: far beyond any real size, well within Python's recursion limit
MAX_DEPTH = 100


class SizeError(ValueError):
    """A size expression that cannot be read or evaluated; the message is one line."""


@dataclass(frozen=True)
class Token:
    kind: str  # "number", "name", "op" or "end"
    text: str
    col: int  # 1-based column of the token's first character


@dataclass(frozen=True)
class Value:
    amount: Fraction
    is_size: bool  # True: bytes; False: a plain number


def tokenize(text: str) -> list[Token]:
    tokens = []
    pos = 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None:
            raise SizeError(_at(text, Token("op", text[pos], pos + 1), "unexpected character"))
        kind = m.lastgroup or ""
        if kind != "space":
            tokens.append(Token(kind, m.group(), pos + 1))
        pos = m.end()
    tokens.append(Token("end", "", len(text) + 1))
    return tokens


def _at(text: str, tok: Token, problem: str) -> str:
    where = "the end" if tok.kind == "end" else repr(tok.text)
    return f"cannot read {text!r}: column {tok.col} ({where}): {problem}"


class _Parser:
    def __init__(self, text: str, ram: Callable[[], int]) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.pos = 0
        self.depth = 0
        self.ram = ram

    # -- helpers ---------------------------------------------------------------------------------
    @property
    def tok(self) -> Token:
        return self.tokens[self.pos]

    def fail(self, tok: Token, problem: str) -> SizeError:
        return SizeError(_at(self.text, tok, problem))

    def take(self, text: str) -> bool:
        if self.tok.kind == "op" and self.tok.text == text:
            self.pos += 1
            return True
        return False

    def expect(self, text: str, what: str) -> None:
        if not self.take(text):
            raise self.fail(self.tok, f"expected {what}")

    # -- grammar ---------------------------------------------------------------------------------
    def parse(self) -> Value:
        value = self.expr()
        if self.tok.kind != "end":
            raise self.fail(self.tok, "expected an operator (+ - * /) or the end")
        return value

    def expr(self) -> Value:
        first = self.tok
        left = self.term()
        while self.tok.kind == "op" and self.tok.text in "+-":
            op = self.tok
            self.pos += 1
            second = self.tok
            right = self.term()
            if left.is_size != right.is_size:
                plain = second if left.is_size else first
                verb = "add" if op.text == "+" else "subtract"
                raise self.fail(plain, _mixed(f"cannot {verb} a size and a plain number"))
            sign = 1 if op.text == "+" else -1
            left = Value(left.amount + sign * right.amount, left.is_size)
        return left

    def term(self) -> Value:
        left = self.unary()
        while self.tok.kind == "op" and self.tok.text in "*/":
            op = self.tok
            self.pos += 1
            operand = self.tok
            right = self.unary()
            if op.text == "*":
                if left.is_size and right.is_size:
                    raise self.fail(op, "cannot multiply a size by a size")
                left = Value(left.amount * right.amount, left.is_size or right.is_size)
            else:
                if right.amount == 0:
                    raise self.fail(operand, "division by zero")
                if right.is_size and not left.is_size:
                    raise self.fail(op, "cannot divide a plain number by a size")
                left = Value(left.amount / right.amount, left.is_size and not right.is_size)
        return left

    def unary(self) -> Value:
        # every nesting level (parentheses, function arguments, signs) passes through here
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.fail(self.tok, f"nested more than {MAX_DEPTH} deep")
        try:
            if self.take("-"):
                inner = self.unary()
                return Value(-inner.amount, inner.is_size)
            if self.take("+"):
                return self.unary()
            return self.atom()
        finally:
            self.depth -= 1

    def atom(self) -> Value:
        tok = self.tok
        if tok.kind == "number":
            self.pos += 1
            return _number(self.text, tok)
        if tok.kind == "name":
            self.pos += 1
            name = tok.text.lower()
            if name == "ram":
                return Value(Fraction(self.ram()), True)
            if name in FUNCTIONS:
                return self.call(tok, name)
            raise self.fail(tok, "unknown name (known: ram, min, max)")
        if self.take("("):
            value = self.expr()
            self.expect(")", "')'")
            return value
        raise self.fail(tok, "expected a number, ram, min(...), max(...) or '('")

    def call(self, fn: Token, name: str) -> Value:
        self.expect("(", f"'(' after {name}")
        starts = [self.tok]
        args = [self.expr()]
        while self.take(","):
            starts.append(self.tok)
            args.append(self.expr())
        self.expect(")", "',' or ')'")
        if len(args) < 2:
            raise self.fail(fn, f"{name}() needs at least two arguments")
        for start, arg in zip(starts, args, strict=True):
            if not arg.is_size and any(a.is_size for a in args):
                raise self.fail(
                    start, _mixed(f"{name}() cannot compare a size with a plain number")
                )
        pick = min if name == "min" else max
        return Value(pick(a.amount for a in args), args[0].is_size)


def _mixed(what: str) -> str:
    return (
        f"{what}: give the number a unit, e.g. 512M (zram-generator's plain numbers are MiB;"
        " here a number without a unit is bytes)"
    )


def _number(text: str, tok: Token) -> Value:
    m = re.match(r"(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)$", tok.text)
    assert m is not None  # the tokenizer only makes number tokens of this shape
    digits, unit = m.groups()
    if not unit:
        return Value(Fraction(digits), False)
    um = _UNIT_RE.match(unit)
    if um is None:
        raise SizeError(_at(text, tok, f"unknown unit {unit!r} (K, M, G, T; KiB, MB, ... or B)"))
    mult = UNITS[(um.group(1) or "B").upper()]
    return Value(Fraction(digits) * mult, True)


def meminfo_total() -> int:
    """MemTotal of this machine, in bytes."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise SizeError("/proc/meminfo has no MemTotal line, so `ram` has no value")


def evaluate(text: str, ram: Callable[[], int] = meminfo_total) -> int:
    """The value of size expression *text*, in bytes (see the module docstring for rounding).
    *ram* is called only if the text mentions `ram`."""
    parser = _Parser(text, ram)
    value = parser.parse()
    if value.amount < 0:
        raise SizeError(f"{text!r} is negative ({float(value.amount):.0f} bytes)")
    result = int(value.amount)  # floor: amount is not negative
    literal = len(parser.tokens) == 2 and parser.tokens[0].kind == "number"  # and the end marker
    if not literal:
        result -= result % PAGE_SIZE
    return result
