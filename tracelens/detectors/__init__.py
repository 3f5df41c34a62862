"""Detector kinds: one module each, found by name (see ``base`` for the contract)."""

from __future__ import annotations

import importlib
from types import ModuleType

from tracelens.errors import RuleError

KINDS = (
    "n_plus_one",
    "pool_wait",
    "lock_contention",
    "tail_latency",
    "slow_query",
    "sequential_calls",
    "error_origin",
)
_REQUIRED = ("KIND", "SCOPE", "PARAMS", "detect")


def get(kind: str) -> ModuleType:
    """The detector module for ``kind``; unknown kinds fail with "did you mean"."""
    if kind not in KINDS:
        from tracelens.rules import did_you_mean

        raise RuleError(
            f"unknown detector {kind!r}{did_you_mean(kind, KINDS)} (known: {', '.join(KINDS)})"
        )
    module = importlib.import_module(f"tracelens.detectors.{kind}")
    missing = [name for name in _REQUIRED if not hasattr(module, name)]
    if missing or module.KIND != kind or module.SCOPE not in ("trace", "store"):
        raise RuleError(
            f"detector module {module.__name__} breaks the contract in "
            f"detectors/base.py (missing or wrong: {', '.join(missing) or 'KIND/SCOPE'})"
        )
    return module
