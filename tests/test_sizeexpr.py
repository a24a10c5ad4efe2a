"""Size expressions (zram-generator's grammar) for --size, --mem-limit and their TOML keys."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zswapfs.service import config as cfgmod
from zswapfs.service.config import ConfigError, parse_size
from zswapfs.service.sizeexpr import PAGE_SIZE, UNITS, SizeError, evaluate

pytestmark = pytest.mark.unit

RAM = 24 * (1 << 30) + 12345 * 1024  # not a page multiple, as a real MemTotal need not be


def ev(text: str) -> int:
    return evaluate(text, ram=lambda: RAM)


def test_literals_keep_their_old_meaning() -> None:
    assert parse_size("1G") == 1 << 30
    assert parse_size("512M") == 512 << 20
    assert parse_size("4096") == 4096  # a plain number is bytes
    assert parse_size("64KiB") == 64 << 10
    assert parse_size("64kb") == 64 << 10
    assert parse_size(" 1 G ") == 1 << 30
    assert parse_size("4096B") == 4096
    assert parse_size(8192) == 8192  # a TOML integer
    assert parse_size("1.5G") == 3 << 29


def test_zram_generator_expressions() -> None:
    half = RAM // 2 - (RAM // 2) % PAGE_SIZE
    assert ev("ram / 2") == half
    assert ev("min(ram / 2, 4G)") == 4 << 30
    assert ev("max(ram / 2, 4G)") == half
    assert ev("min(ram/2,4G,1G)") == 1 << 30
    assert ev("(ram - 1G) * 3 / 4") == (RAM - (1 << 30)) * 3 // 4 // PAGE_SIZE * PAGE_SIZE
    assert ev("ram * 0.25") == RAM // 4 // PAGE_SIZE * PAGE_SIZE
    assert ev("2 * 512M + -(256M)") == 768 << 20
    assert ev("RAM / ram * 1G") == 1 << 30  # a size over a size is a plain number


def test_ram_is_read_only_when_used() -> None:
    def no_ram() -> int:
        raise AssertionError("ram read for an expression without ram")

    assert evaluate("min(1G, 2G)", ram=no_ram) == 1 << 30


def test_ram_is_memtotal() -> None:
    with open("/proc/meminfo") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
    assert parse_size("ram * 1") == kib * 1024 // PAGE_SIZE * PAGE_SIZE


@pytest.mark.parametrize(
    "text, col, token, problem",
    [
        ("12Q", 1, "'12Q'", "unknown unit 'Q'"),
        ("min(ram / 2, 4096)", 14, "'4096'", "give the number a unit"),
        ("ram / 2 + 512", 11, "'512'", "cannot add a size and a plain number"),
        ("ram ^ 2", 5, "'^'", "unexpected character"),
        ("min(ram / 2, 4G", 16, "the end", "expected ',' or ')'"),
        ("ram / (1G - 1G)", 7, "'('", "division by zero"),
        ("swap / 2", 1, "'swap'", "unknown name"),
        ("1G 2G", 4, "'2G'", "expected an operator"),
        ("", 1, "the end", "expected a number"),
        ("max(1G)", 1, "'max'", "at least two arguments"),
        ("ram * ram", 5, "'*'", "cannot multiply a size by a size"),
        ("2 / ram", 3, "'/'", "cannot divide a plain number by a size"),
        ("min 1G", 5, "'1G'", "expected '(' after min"),
        ("(" * 101 + "1G" + ")" * 101, 101, "'('", "nested more than 100 deep"),
        ("-" * 500 + "1G", 101, "'-'", "nested more than 100 deep"),
    ],
)
def test_errors_point_at_the_token(text: str, col: int, token: str, problem: str) -> None:
    with pytest.raises(ConfigError) as exc:
        cfgmod.from_mapping({"zram-size": text}, where="swap0.toml: ")
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith(f"swap0.toml: zram-size: cannot read {text!r}: column {col} ({token}): ")
    assert problem in msg


def test_negative_and_wrong_types() -> None:
    with pytest.raises(ConfigError, match="--mem-limit: '1G - 2G' is negative"):
        parse_size("1G - 2G", "--mem-limit")
    with pytest.raises(ConfigError, match="mem-limit: expected a size"):
        cfgmod.from_mapping({"mem-limit": 0.5})


def test_toml_keys_take_expressions() -> None:
    cfg = cfgmod.from_mapping({"size": "min(ram / 2, 2G)", "mem-limit": "ram / 64"}).check()
    assert cfg.size == 2 << 30
    assert cfg.mem_limit > 0 and cfg.mem_limit % PAGE_SIZE == 0


# -- properties ----------------------------------------------------------------------------------
unit_names = st.sampled_from(["", "K", "M", "G", "k", "KiB", "MB", "gib", "B"])


@given(st.integers(0, 1 << 20), unit_names)
def test_literal_with_unit(n: int, unit: str) -> None:
    mult = UNITS[unit[:1].upper()] if unit[:1].upper() in "KMGT" and unit else 1
    assert ev(f"{n}{unit}") == n * mult


# A random expression tree over sizes, rendered to text next to its exact value in a model.
sizes = st.builds(
    lambda n, u: (f"{n}{u}", Fraction(n * UNITS[u])),
    st.integers(0, 4096),
    st.sampled_from(["K", "M", "G"]),
) | st.just(("ram", Fraction(RAM)))
scalars = st.integers(1, 64).map(lambda n: (str(n), Fraction(n)))


def _combine(children: st.SearchStrategy[tuple[str, Fraction]]) -> st.SearchStrategy:
    pair = st.tuples(children, children)
    return st.one_of(
        pair.map(lambda p: (f"({p[0][0]} + {p[1][0]})", p[0][1] + p[1][1])),
        pair.map(lambda p: (f"min({p[0][0]},{p[1][0]})", min(p[0][1], p[1][1]))),
        pair.map(lambda p: (f"max( {p[0][0]} , {p[1][0]} )", max(p[0][1], p[1][1]))),
        st.tuples(children, scalars).map(lambda p: (f"{p[0][0]} * {p[1][0]}", p[0][1] * p[1][1])),
        st.tuples(children, scalars).map(lambda p: (f"{p[0][0]}/{p[1][0]}", p[0][1] / p[1][1])),
    )


expressions = st.recursive(sizes, _combine, max_leaves=8)


@given(expressions)
def test_expressions_match_the_model(expr: tuple[str, Fraction]) -> None:
    text, value = expr
    exact = int(value)
    want = exact if text.strip().isalnum() and text != "ram" else exact - exact % PAGE_SIZE
    assert ev(text) == want


@given(st.text(alphabet="0123456789.+-*/(), KMGTBiramnx^", max_size=30))
def test_any_text_is_a_value_or_one_clear_error(text: str) -> None:
    try:
        assert ev(text) >= 0
    except SizeError as exc:
        msg = str(exc)
        assert "\n" not in msg and (msg.startswith("cannot read") or "negative" in msg)
