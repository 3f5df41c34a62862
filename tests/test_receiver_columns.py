"""Decoder column blocks → Arrow: the same batch however blocks are split, joined or shaped."""

from __future__ import annotations

import pyarrow as pa
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from receiver_support import export_request, sdk_spans

from tracelens.model import SPAN_SCHEMA
from tracelens.receiver.columns import Columns
from tracelens.receiver.decode import Decoder
from tracelens.receiver.writer import _one_batch


def _request(service: str, spans: int, *, scope: str = "lib") -> bytes:
    request = export_request(sdk_spans(spans, service))
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            ss.scope.name = scope
    return request.SerializeToString()


def _blocks(*requests: bytes) -> list[Columns]:
    decoder = Decoder()
    return [block for data in requests for block in decoder.decode(data, "t").blocks]


def test_concatenated_blocks_equal_the_blocks_converted_one_by_one() -> None:
    # Different services and scopes: each block numbers its contexts from 0.
    blocks = _blocks(_request("a", 10), _request("b", 15, scope="other"), _request("a", 5))
    one = Columns.concat(blocks).to_batch()
    assert one.num_rows == 30
    expected = pa.Table.from_batches([b.to_batch() for b in blocks])
    assert pa.Table.from_batches([one]).equals(expected)
    assert one.column("service").to_pylist() == ["a"] * 10 + ["b"] * 15 + ["a"] * 5
    assert set(one.column("scope_name").to_pylist()[10:25]) == {"other"}


def test_concat_leaves_its_parts_unchanged() -> None:
    blocks = _blocks(_request("a", 4), _request("b", 6))
    before = [b.to_batch() for b in blocks]
    Columns.concat(blocks).to_batch()
    assert [b.to_batch() for b in blocks] == before


def test_roots_children_and_constant_columns() -> None:
    data = _request("svc", 10)  # 2 roots with 4 children each
    batch = _blocks(data)[0].to_batch()
    request = ExportTraceServiceRequest.FromString(data)
    spans = list(request.resource_spans[0].scope_spans[0].spans)
    assert batch.column("parent_span_id").to_pylist() == [
        s.parent_span_id.hex() or None for s in spans
    ]
    assert batch.column("trace_id").to_pylist() == [s.trace_id.hex() for s in spans]
    assert [e == "[]" for e in batch.column("events").to_pylist()] == [not s.events for s in spans]
    assert batch.column("links").to_pylist() == ["[]"] * 10
    assert batch.column("trace_state").null_count == 10
    assert batch.column("status_message").to_pylist() == [s.status.message or None for s in spans]
    assert batch.column("duration_ns").to_pylist() == [
        s.end_time_unix_nano - s.start_time_unix_nano for s in spans
    ]
    batch.validate(full=True)


def test_an_empty_block_converts_to_an_empty_batch() -> None:
    batch = Columns().to_batch()
    assert batch.num_rows == 0 and batch.schema == SPAN_SCHEMA


@pytest.mark.parametrize("order", ["batch-first", "blocks-first"])
def test_writer_joins_batches_and_blocks_in_order(order: str) -> None:
    blocks = _blocks(_request("a", 5), _request("b", 5))
    batch = _blocks(_request("c", 5))[0].to_batch()
    items = [batch, *blocks] if order == "batch-first" else [*blocks, batch]
    services = [s for item in items for s in _services(item)]
    assert _one_batch(items).column("service").to_pylist() == services


def _services(item: pa.RecordBatch | Columns) -> list[str]:
    batch = item if isinstance(item, pa.RecordBatch) else item.to_batch()
    return batch.column("service").to_pylist()
