"""Integer settings, checked one way everywhere: bools are not ints, numpy integers are, the range is inclusive.

The error names the argument and the range (``k must be an int in [1, n_buckets=8], got 0``), and the
value comes back as a plain ``int`` so that configs saved with ``asdict`` stay JSON.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _expected(low: int | None, high: int | None, high_name: str | None) -> str:
    top = None if high is None else (f"{high_name}={high}" if high_name else str(high))
    if low is not None and top is not None:
        return f"an int in [{low}, {top}]"
    if low is not None:
        return f"an int >= {low}"
    if top is not None:
        return f"an int <= {top}"
    return "an int"


def check_int(name: str, value: Any, low: int | None = 1, high: int | None = None, *,
              high_name: str | None = None, note: str = "") -> int:
    """``value`` as an ``int`` if it is a Python or numpy integer (not a bool) in ``[low, high]``.

    ``None`` for a bound leaves that side open. ``high_name`` says where ``high`` comes from
    (``bits=64``); ``note`` is appended to the expectation, e.g. ``"(a positive and a negative at least)"``.
    """
    if (isinstance(value, bool) or not isinstance(value, (int, np.integer))
            or (low is not None and value < low) or (high is not None and value > high)):
        expected = _expected(low, high, high_name) + (f" {note}" if note else "")
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return int(value)


def check_optional_int(name: str, value: Any, low: int | None = 1, high: int | None = None, *,
                       high_name: str | None = None, note: str = "") -> int | None:
    """``None`` or :func:`check_int`; the message says that ``None`` is allowed (``note`` follows it)."""
    if value is None:
        return None
    return check_int(name, value, low, high, high_name=high_name, note="or None" + (f" {note}" if note else ""))
