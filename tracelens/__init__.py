"""tracelens: OpenTelemetry trace analyzer and root-cause engine.

Imports stay lazy: ``tracelens explain`` must start fast, and importing duckdb or pyarrow
costs ~100 ms each.
"""

from __future__ import annotations

__version__ = "0.1.0"

from tracelens.errors import (  # noqa: E402  (errors are cheap; everything else is lazy)
    InputFormatError,
    ReceiverError,
    RuleError,
    StoreError,
    TracelensError,
    TraceNotFoundError,
)

__all__ = [
    "InputFormatError",
    "ReceiverError",
    "RuleError",
    "StoreError",
    "TraceNotFoundError",
    "TracelensError",
    "__version__",
]
