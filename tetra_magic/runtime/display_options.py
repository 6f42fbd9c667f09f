"""The display options a remote cell sets, sent home: pandas' `display.*` options.

At home `pd.set_option("display.max_rows", 5)` in a cell changes the kernel's pandas, so the
cell's own Out, and every later cell's, shows 5 rows. A remote cell sets it on the worker,
where the kernel never sees it: so the options the cell changed go home with its values, and
the kernel sets them too (cell/outcome.py) before it shows the cell's Out. Only options whose
values are plain (numbers, strings, booleans, None) travel; a formatter function does not.

pandas' registry of options has no public listing; its `_registered_options` has been where
it is since pandas 0.x, and without it nothing is sent.
"""

from __future__ import annotations

import sys
from typing import Any

_PLAIN = (bool, int, float, str, type(None))


def before() -> dict[str, Any] | None:
    """pandas' display options as the cell starts (None: pandas is not imported yet)."""
    pandas = sys.modules.get("pandas")
    return _current(pandas) if pandas is not None else None


def changed(start: dict[str, Any] | None) -> dict[str, Any]:
    """The display options that differ now from `start` (from pandas' defaults where the
    cell imported pandas itself), {option: value}."""
    pandas = sys.modules.get("pandas")
    if pandas is None:
        return {}
    now = _current(pandas)
    base = start if start is not None else _defaults(pandas)
    return {k: v for k, v in now.items() if k in base and base[k] != v and isinstance(v, _PLAIN)}


def _registered(pandas: Any) -> dict[str, Any]:
    config = getattr(getattr(pandas, "_config", None), "config", None)
    options = getattr(config, "_registered_options", None)
    return options if isinstance(options, dict) else {}


def _current(pandas: Any) -> dict[str, Any]:
    values = {}
    for key in _registered(pandas):
        if key.startswith("display."):
            try:
                values[key] = pandas.get_option(key)
            except Exception:  # an option that cannot be read now is not the cell's
                continue
    return values


def _defaults(pandas: Any) -> dict[str, Any]:
    return {
        key: getattr(option, "defval", None)
        for key, option in _registered(pandas).items()
        if key.startswith("display.")
    }
