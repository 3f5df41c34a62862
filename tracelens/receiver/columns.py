"""``SPAN_SCHEMA`` columns filled scope by scope and converted to Arrow in bulk.

``pa.array`` over a Python list costs 50-100 ns a value on this class of machine, 28 times
per span: as much as decoding. So the columns are built the cheap way for what they hold:

- ids stay raw bytes until the batch is made: one ``bytes.hex`` over all of them joined,
  sliced into fixed-width strings by an offsets buffer;
- the attribute columns (JSON and the derived columns) come as one tuple per span from the
  decoder's caches, mostly the same few tuples: the batch converts each distinct tuple once
  and ``take``s;
- the scope and resource columns are constant per scope: runs, expanded by ``take``;
- a column whose values are all the same object (no events, no trace state…) is one value
  expanded by ``take``.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from tracelens.model import DERIVED_COLUMNS, SPAN_SCHEMA

ID_COLUMNS = ("trace_id", "span_id", "parent_span_id")
PLAIN_COLUMNS = (
    "name", "kind", "start_ns", "end_ns", "status_code", "status_message", "follows_from",
    "trace_state", "events", "links",
)  # fmt: skip
CONTEXT_COLUMNS = ("scope_name", "scope_version", "resource_attributes")
DESCRIBED_COLUMNS = ("attributes", *DERIVED_COLUMNS)
COMPUTED_COLUMNS = ("duration_ns",)  # end_ns - start_ns, in Arrow
_GROUPS = ID_COLUMNS + PLAIN_COLUMNS + CONTEXT_COLUMNS + DESCRIBED_COLUMNS + COMPUTED_COLUMNS
if sorted(_GROUPS) != sorted(SPAN_SCHEMA.names):
    raise ImportError("tracelens.receiver.columns: column groups no longer match SPAN_SCHEMA")

_TYPES = {f.name: f.type for f in SPAN_SCHEMA}
_NO_PARENT = pa.scalar("0" * 16, pa.string())  # a root while the ids are hex (a Scalar:
# a Python value makes pyarrow.compute retry importing numpy on every call)
_ZERO_SPAN = bytes(8)
_offsets: dict[int, pa.Buffer] = {}  # width → int32 offsets 0, width, 2·width… (grown on need)


class Columns:
    """Spans added scope by scope; :meth:`to_batch` makes the record batch.

    Converting costs a fixed ~20-60 µs per pyarrow call on top of the per-value cost, so the
    writer concatenates the columns of every request of a commit (:meth:`concat`) and
    converts once.
    """

    def __init__(self) -> None:
        self.num_rows = 0
        self._ids: tuple[list[bytes], list[bytes], list[bytes]] = ([], [], [])
        self._plain: list[list[Any]] = [[] for _ in PLAIN_COLUMNS]
        self._contexts: dict[tuple, int] = {}  # (scope name, scope version, resource JSON) → index
        self._runs = array("i")  # the context index of every row
        self._described: list[tuple] = []

    def add(
        self,
        ids: Sequence[list[bytes]],
        plain: Sequence[Sequence[Any]],
        context: tuple[str | None, str | None, str],
        described: list[tuple],
    ) -> None:
        """One block: raw ids (trace 16 bytes, span 8, parent 8 or empty), the plain columns
        in ``PLAIN_COLUMNS`` order, the block's context and one described tuple per span."""
        n = len(described)
        for column, values in zip(self._ids, ids, strict=True):
            column.extend(values)
        for column, values in zip(self._plain, plain, strict=True):
            column.extend(values)
        index = self._contexts.setdefault(context, len(self._contexts))
        self._runs.extend(array("i", (index,)) * n)
        self._described.extend(described)
        self.num_rows += n

    @classmethod
    def concat(cls, parts: Sequence[Columns]) -> Columns:
        """One ``Columns`` holding the rows of ``parts`` in order (the parts are unchanged)."""
        if len(parts) == 1:
            return parts[0]
        out = cls()
        for part in parts:
            for column, values in zip(out._ids, part._ids, strict=True):
                column.extend(values)
            for column, values in zip(out._plain, part._plain, strict=True):
                column.extend(values)
            remap = [out._contexts.setdefault(c, len(out._contexts)) for c in part._contexts]
            if remap == list(range(len(remap))):
                out._runs.extend(part._runs)
            else:
                out._runs.extend(array("i", [remap[i] for i in part._runs]))
            out._described.extend(part._described)
            out.num_rows += part.num_rows
        return out

    def to_batch(self) -> pa.RecordBatch:
        """The rows as one record batch of ``SPAN_SCHEMA``."""
        trace_ids, span_ids, parents = self._ids
        arrays = {
            "trace_id": _hex(trace_ids, 16),
            "span_id": _hex(span_ids, 8),
            "parent_span_id": _parent_hex(parents),
        }
        for name, values in zip(PLAIN_COLUMNS, self._plain, strict=True):
            arrays[name] = _array(values, _TYPES[name])
        arrays["duration_ns"] = pc.subtract(arrays["end_ns"], arrays["start_ns"])
        runs = pa.Array.from_buffers(pa.int32(), len(self._runs), [None, pa.py_buffer(self._runs)])
        arrays.update(_expanded(list(self._contexts), CONTEXT_COLUMNS, runs))
        described = (
            zip(*self._described, strict=True) if self._described else [()] * len(DESCRIBED_COLUMNS)
        )
        for name, values in zip(DESCRIBED_COLUMNS, described, strict=True):
            arrays[name] = pa.array(values, type=_TYPES[name])
        return pa.RecordBatch.from_arrays(
            [arrays[n] for n in SPAN_SCHEMA.names], schema=SPAN_SCHEMA
        )


def _hex(ids: list[bytes], width: int) -> pa.Array:
    """Ids of ``width`` bytes each as lowercase hex strings, in one ``hex()`` call."""
    data = b"".join(ids).hex().encode("ascii")
    return pa.Array.from_buffers(
        pa.string(), len(ids), [None, _fixed_offsets(2 * width, len(ids)), pa.py_buffer(data)]
    )


def _parent_hex(parents: list[bytes]) -> pa.Array:
    if not any(parents):
        return pa.nulls(len(parents), pa.string())
    padded = _hex([p or _ZERO_SPAN for p in parents], 8)
    # An all-zero parent never gets here (the span-by-span path turns it into a root).
    return pc.if_else(pc.equal(padded, _NO_PARENT), pa.scalar(None, pa.string()), padded)


def _fixed_offsets(width: int, n: int) -> pa.Buffer:
    buf = _offsets.get(width)
    if buf is None or buf.size < 4 * (n + 1):
        size = max(n + 1, 32_768)
        buf = _offsets[width] = pa.py_buffer(array("i", range(0, width * size, width)))
    return buf.slice(0, 4 * (n + 1))


def _array(values: list[Any], type_: pa.DataType) -> pa.Array:
    n = len(values)
    if n and values.count(values[0]) == n:  # identity first: fast for a shared constant
        return _repeat(values[0], type_, n)
    return pa.array(values, type=type_)


def _repeat(value: Any, type_: pa.DataType, n: int) -> pa.Array:
    if value is None:
        return pa.nulls(n, type_)
    zeros = pa.Array.from_buffers(pa.int32(), n, [None, pa.py_buffer(bytes(4 * n))])
    return pa.array([value], type=type_).take(zeros)


def _expanded(distinct: list[tuple], names: Sequence[str], indices: pa.Array) -> dict:
    """Columns ``names`` of the ``distinct`` tuples, expanded by ``indices``."""
    out = {}
    columns = zip(*distinct, strict=True) if distinct else [()] * len(names)
    for name, values in zip(names, columns, strict=True):
        out[name] = pa.array(values, type=_TYPES[name]).take(indices)
    return out
