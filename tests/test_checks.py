"""common.checks: the one integer check the packages share."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common.checks import check_int, check_optional_int

ROOT = Path(__file__).resolve().parents[1]


def test_ints_and_numpy_ints_come_back_as_plain_ints():
    assert check_int("n", 3) == 3 and type(check_int("n", 3)) is int
    for value in (np.int64(7), np.int32(7), np.uint8(7)):
        out = check_int("n", value)
        assert out == 7 and type(out) is int


@pytest.mark.parametrize("value", [True, False, np.bool_(True), 2.0, 2.5, "2", None, np.float64(2), np.array([2])])
def test_bools_and_non_integers_are_rejected(value):
    with pytest.raises(ValueError, match=r"count must be an int >= 0, got "):
        check_int("count", value, low=0)


def test_the_range_is_inclusive_on_both_sides():
    assert check_int("k", 1, 1, 4) == 1 and check_int("k", 4, 1, 4) == 4
    with pytest.raises(ValueError, match=r"^k must be an int in \[1, 4\], got 0$"):
        check_int("k", 0, 1, 4)
    with pytest.raises(ValueError, match=r"^k must be an int in \[1, 4\], got 5$"):
        check_int("k", 5, 1, 4)
    with pytest.raises(ValueError, match=r"^k must be an int in \[1, 4\], got " + re.escape(repr(np.int64(5)))):
        check_int("k", np.int64(5), 1, 4)


def test_the_default_lower_bound_is_one():
    assert check_int("batch_size", 1) == 1
    with pytest.raises(ValueError, match=r"^batch_size must be an int >= 1, got 0$"):
        check_int("batch_size", 0)
    with pytest.raises(ValueError, match=r"^group must be an int >= 2, got 1$"):
        check_int("group", 1, low=2)


def test_open_bounds():
    assert check_int("seed", -5, low=None) == -5
    with pytest.raises(ValueError, match=r"^seed must be an int, got 'x'$"):
        check_int("seed", "x", low=None)
    assert check_int("x", -3, low=None, high=0) == -3
    with pytest.raises(ValueError, match=r"^x must be an int <= 0, got 1$"):
        check_int("x", 1, low=None, high=0)


def test_the_message_names_the_argument_the_upper_bound_and_the_note():
    with pytest.raises(ValueError, match=r"^content_bits must be an int in \[1, bits=64\], got 65$"):
        check_int("content_bits", 65, 1, 64, high_name="bits")
    with pytest.raises(ValueError, match=r"^top_e must be an int in \[1, 3\] \(the number of centres\), got 4$"):
        check_int("top_e", 4, 1, 3, note="(the number of centres)")


def test_optional_ints_allow_none_and_say_so():
    assert check_optional_int("k", None) is None
    assert type(check_optional_int("k", np.int16(2))) is int
    with pytest.raises(ValueError, match=r"^k must be an int >= 1 or None \(all items\), got 0$"):
        check_optional_int("k", 0, note="(all items)")
    with pytest.raises(ValueError, match=r"^num_threads must be an int >= 1 or None, got True$"):
        check_optional_int("num_threads", True)


def test_importing_the_checker_loads_no_torch():
    code = "import sys, common.checks; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"], out.stdout + out.stderr


def test_settings_that_once_took_a_bool_for_an_int_reject_it():
    from hashing.index import create_index
    from rerank.lru import FeatureCache

    for build, name in [(lambda: create_index("hnsw", 64, M=True), "M"), (lambda: FeatureCache(True), "cache_size"),
                        (lambda: create_index("hnsw", 64, ef_search=0), "ef_search")]:
        with pytest.raises(ValueError, match=name):
            build()
    assert FeatureCache(np.int64(3)).capacity == 3 and type(FeatureCache(np.int64(3)).capacity) is int
