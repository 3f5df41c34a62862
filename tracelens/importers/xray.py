"""AWS X-Ray segment documents → spans.

Containers accepted (several may follow each other in one file, whitespace-separated):

- a bare segment (or independent subsegment) document;
- the daemon UDP datagram: the header ``{"format": "json", "version": 1}``, a newline, then
  the document (headers are skipped wherever they appear);
- ``aws xray batch-get-traces`` output: ``{"Traces": [{"Segments": [{"Document": "<JSON>"}]}]}``;
- a JSON array of documents (objects or JSON strings, as in ``PutTraceSegments``).

Every segment and every subsegment nested in it (to any depth, walked without recursion) is one
span. Subsegments inherit the trace id, their parent is the enclosing object, their service
is their segment's name; an independent subsegment document (``type: subsegment``) takes the
service of its parent when that parent is in the same file, else none (``unknown_service``).
``parent_id`` values that point into another document are plain span ids and resolve in the
call tree like any other.

- Trace ids ``1-<8 hex>-<24 hex>`` → the 32 hex digits; times (epoch seconds, plain or exponent
  form) are parsed as exact decimals → integer ns. ``in_progress`` → ``xray.in_progress=true``;
  without an ``end_time`` the span ends where it starts.
- JSON nesting is bounded by the parser (about 490 subsegment levels at Python's default
  recursion limit); deeper documents fail with an ``InputFormatError``, not a crash.
- Kind: segments (including ``inferred`` ones) SERVER; subsegments with ``namespace`` ``aws``
  or ``remote`` CLIENT; other subsegments INTERNAL.
- ``http``, ``sql``, ``aws`` → current semantic-convention attributes (``http.request.method``,
  ``url.full``, ``http.response.status_code``, ``db.statement``, ``db.system``,
  ``server.address``, ``rpc.*``, ``aws.*``); ``origin`` → resource ``cloud.platform``; the
  segment's ``aws.ec2/ecs/elastic_beanstalk/eks/xray`` and ``service`` blocks → resource.
- ``annotations`` → ``xray.annotation.<key>``; ``metadata`` → ``xray.metadata.<ns>.<key>`` as
  JSON text.
- ``error``/``fault``/``throttle`` → ``xray.error``/``xray.fault``/``xray.throttle``; fault, error
  or a cause → status ERROR, message from the first exception (a bare exception-id cause is
  looked up among the exceptions of the file, else the id itself); exceptions → ``exception``
  events at the span's end.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any, BinaryIO

import orjson
import pyarrow as pa

from tracelens import ids
from tracelens.errors import InputFormatError
from tracelens.model import SpanBatchBuilder, SpanKind, StatusCode, gc_paused

NAME = "xray"

_XRAY_TRACE_ID = re.compile(rb'"trace_id"\s*:\s*"1-[0-9a-fA-F]{8}-[0-9a-fA-F]{24}"')
_BATCH = re.compile(rb'^\{\s*"Traces"\s*:\s*\[')
_NS = Decimal(1_000_000_000)
_DECODER = json.JSONDecoder(parse_float=Decimal)


# --- sniffing ---------------------------------------------------------------------------------


def sniff(head: bytes, filename: str) -> bool:
    """A daemon header, a batch-get-traces object, or a document with a ``1-…`` trace id."""
    text = head.removeprefix(b"\xef\xbb\xbf").lstrip()
    if not text.startswith((b"{", b"[")):
        return False
    try:
        first, _ = _DECODER.raw_decode(text.decode("utf-8", "replace"))
    except ValueError:  # the first value does not fit in the head: look at distinctive keys
        return text.startswith(b"{") and bool(
            _BATCH.match(text) and b'"Segments"' in text or _XRAY_TRACE_ID.search(text)
        )
    if isinstance(first, list):
        first = first[0] if first else None
        if isinstance(first, str):
            try:
                first = json.loads(first)
            except ValueError:
                return False
    return isinstance(first, dict) and (_is_header(first) or _is_batch(first) or _is_doc(first))


def _is_header(obj: Mapping[str, Any]) -> bool:
    return obj.get("format") == "json" and set(obj) <= {"format", "version"}


def _is_batch(obj: Mapping[str, Any]) -> bool:
    traces = obj.get("Traces")
    return isinstance(traces, list) and all(isinstance(t, dict) and "Segments" in t for t in traces)


def _is_doc(obj: Mapping[str, Any]) -> bool:
    trace = obj.get("trace_id")
    return isinstance(trace, str) and trace.startswith("1-") and "id" in obj


# --- reading ----------------------------------------------------------------------------------


@dataclass(slots=True)
class XRow:
    """One span before emission; ``service`` is None until resolved (independent subsegments)."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    kind: SpanKind
    start_ns: int
    end_ns: int
    service: str | None
    resource: dict[str, Any]
    attributes: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    status_code: int = StatusCode.UNSET
    status_message: str | None = None
    cause_id: str | None = None  # a bare exception-id cause, resolved after the whole file


def read(stream: BinaryIO, source: str) -> Iterator[pa.RecordBatch]:
    """Record batches of every segment and subsegment in one X-Ray file."""
    rows: list[XRow] = []
    with gc_paused():  # parent links between documents need the whole file anyway
        for place, doc in documents(stream.read(), source):
            rows.extend(rows_from_document(doc, source, place))
        resolve_services(rows)
        resolve_causes(rows)
        batches = list(emit(rows))
    yield from batches


def emit(rows: list[XRow]) -> Iterator[pa.RecordBatch]:
    builder = SpanBatchBuilder()
    for row in rows:
        resource = row.resource
        if row.service and "service.name" not in resource:
            resource = {**resource, "service.name": row.service}
        builder.add(
            trace_id=row.trace_id,
            span_id=row.span_id,
            parent_span_id=row.parent_id,
            name=row.name,
            kind=row.kind,
            start_ns=row.start_ns,
            end_ns=row.end_ns,
            attributes=row.attributes,
            resource=resource,
            status_code=row.status_code,
            status_message=row.status_message,
            events=row.events,
        )
        if (batch := builder.take_if_full()) is not None:
            yield batch
    if (batch := builder.flush()) is not None:
        yield batch


def documents(raw: bytes, source: str) -> Iterator[tuple[str, dict]]:
    """(place, segment document) for every document in the file, whatever its container."""
    try:
        text = raw.removeprefix(b"\xef\xbb\xbf").decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputFormatError(source, "not UTF-8 text", f"byte {exc.start}") from exc
    if not text.strip():
        raise InputFormatError(source, "empty file")
    for n, value in enumerate(_values(text, source), 1):
        yield from _unwrap(value, source, f"value {n}")


def _values(text: str, source: str) -> Iterator[Any]:
    """The JSON values of ``text`` one after the other (datagrams and JSON lines concatenate)."""
    pos, end = 0, len(text)
    while True:
        while pos < end and text[pos] in " \t\r\n":
            pos += 1
        if pos >= end:
            return
        try:
            value, pos = _DECODER.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            where = f"line {exc.lineno} column {exc.colno}"
            raise InputFormatError(source, f"invalid JSON: {exc.msg}", where) from exc
        except RecursionError as exc:
            raise InputFormatError(source, "JSON nested too deeply", f"offset {pos}") from exc
        yield value


def _unwrap(value: Any, source: str, place: str) -> Iterator[tuple[str, dict]]:
    if isinstance(value, list):
        for i, item in enumerate(value):
            yield from _unwrap(_parse_embedded(item, source, f"[{i}]"), source, f"[{i}]")
    elif not isinstance(value, dict):
        raise InputFormatError(source, "expected a segment document (a JSON object)", place)
    elif _is_header(value):
        return
    elif "Traces" in value:
        traces = value["Traces"] or []
        if not isinstance(traces, list) or not all(isinstance(t, dict) for t in traces):
            raise InputFormatError(source, "Traces must be an array of objects", f"{place}.Traces")
        for i, trace in enumerate(traces):
            for j, seg in enumerate(trace.get("Segments") or ()):
                where = f"Traces[{i}].Segments[{j}].Document"
                if not isinstance(seg, dict) or "Document" not in seg:
                    raise InputFormatError(source, "segment without a Document", where)
                yield where, _parse_embedded(seg["Document"], source, where)
    else:
        yield place, value


def _parse_embedded(doc: Any, source: str, where: str) -> Any:
    """Documents embedded as JSON strings (batch-get-traces, PutTraceSegments) are parsed."""
    if not isinstance(doc, str):
        return doc
    try:
        return _DECODER.decode(doc)
    except json.JSONDecodeError as exc:
        place = f"{where} line {exc.lineno} column {exc.colno}"
        raise InputFormatError(source, f"invalid JSON: {exc.msg}", place) from exc
    except RecursionError as exc:
        raise InputFormatError(source, "JSON nested too deeply", where) from exc


# --- one document -----------------------------------------------------------------------------


def rows_from_document(doc: Mapping[str, Any], source: str, place: str) -> list[XRow]:
    """The document's span and its nested subsegments, pre-order, walked with a stack."""
    trace_text = doc.get("trace_id")
    if not trace_text:
        raise InputFormatError(source, "document has no trace_id", place)
    try:
        trace = ids.trace_id(trace_text)
    except ids.IdError as exc:
        raise InputFormatError(source, str(exc), f"{place}.trace_id") from exc
    independent = str(doc.get("type") or "").lower() == "subsegment"
    service = None if independent else str(doc.get("name") or "")
    resource = resource_of(doc, service)
    rows: list[XRow] = []
    stack: list[tuple[Mapping[str, Any], str | None, str, bool]] = [
        (doc, None, place, not independent)
    ]
    while stack:
        obj, parent, where, is_segment = stack.pop()
        try:
            row = _row(obj, trace, parent, service, resource, is_segment)
        except (
            ids.IdError,
            AttributeError,
            KeyError,
            TypeError,
            ValueError,
            InvalidOperation,
        ) as exc:
            raise InputFormatError(source, _problem(exc), where) from exc
        rows.append(row)
        subs = obj.get("subsegments") or []
        if not isinstance(subs, list):
            raise InputFormatError(source, "subsegments must be an array", f"{where}.subsegments")
        for i in range(len(subs) - 1, -1, -1):  # reversed, so they pop in document order
            stack.append((subs[i], row.span_id, f"{where}.subsegments[{i}]", False))
    return rows


def _problem(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"missing field {exc.args[0]!r}"
    if isinstance(exc, AttributeError):
        return f"a field has the wrong JSON type ({exc})"
    if isinstance(exc, InvalidOperation):
        return "time is not a number"
    return str(exc)


def _row(
    obj: Mapping[str, Any],
    trace: str,
    parent: str | None,
    service: str | None,
    resource: dict[str, Any],
    is_segment: bool,
) -> XRow:
    if not isinstance(obj, dict):
        raise TypeError("expected a (sub)segment object")
    start = seconds_to_ns(obj["start_time"])
    end_time = obj.get("end_time")
    end = seconds_to_ns(end_time) if end_time is not None else start
    if parent is None and obj.get("parent_id"):
        parent = ids.span_id(obj["parent_id"])
    namespace = obj.get("namespace")
    if is_segment:
        kind = SpanKind.SERVER
    else:
        kind = SpanKind.CLIENT if namespace in ("aws", "remote") else SpanKind.INTERNAL
    row = XRow(
        trace_id=trace,
        span_id=ids.span_id(obj["id"]),
        parent_id=parent,
        name=str(obj.get("name") or ""),
        kind=kind,
        start_ns=start,
        end_ns=end,
        service=service,
        resource=resource,
    )
    row.attributes = span_attributes(obj, is_segment)
    if end_time is None or obj.get("in_progress"):
        row.attributes["xray.in_progress"] = True
    _status(row, obj)
    return row


def seconds_to_ns(value: Any) -> int:
    """Epoch seconds (Decimal from the parser, int, float or numeric text) → integer ns."""
    if isinstance(value, bool):
        raise ValueError(f"time must be a number of seconds, got {value!r}")
    if not isinstance(value, Decimal):
        value = Decimal(str(value))
    return int((value * _NS).to_integral_value(rounding=ROUND_HALF_EVEN))


def _status(row: XRow, obj: Mapping[str, Any]) -> None:
    cause = obj.get("cause")
    exceptions = cause.get("exceptions") or [] if isinstance(cause, dict) else []
    for exc in exceptions:
        row.events.append(
            {"time_ns": row.end_ns, "name": "exception", "attributes": exception_attributes(exc)}
        )
    if not (obj.get("fault") or obj.get("error") or cause):
        return
    row.status_code = StatusCode.ERROR
    if isinstance(cause, str):
        row.cause_id = cause
        row.attributes["xray.cause.exception_id"] = cause
    elif exceptions:
        first = exception_attributes(exceptions[0])
        row.status_message = first.get("exception.message") or first.get("exception.type")


# --- whole-file resolution --------------------------------------------------------------------


def resolve_services(rows: list[XRow]) -> None:
    """Independent subsegments take the service of the nearest ancestor in the file."""
    if all(row.service is not None for row in rows):
        return
    by_id = {row.span_id: row for row in rows}
    for row in rows:
        seen = 0
        node: XRow | None = row
        while node is not None and node.service is None and seen <= len(rows):
            node = by_id.get(node.parent_id) if node.parent_id else None
            seen += 1  # bounded: a parent cycle in bad data cannot loop forever
        if row.service is None:
            row.service = node.service if node is not None and node.service else ""


def resolve_causes(rows: list[XRow]) -> None:
    """A cause given as a bare exception id takes that exception's message when it is known."""
    pending = [row for row in rows if row.cause_id]
    if not pending:
        return
    messages: dict[str, str] = {}
    for row in rows:
        for event in row.events:
            attrs = event["attributes"]
            if attrs.get("xray.exception.id"):
                messages.setdefault(attrs["xray.exception.id"], attrs.get("exception.message"))
    for row in pending:
        row.status_message = messages.get(row.cause_id) or row.cause_id


# --- fields → attributes ----------------------------------------------------------------------

# origin → resource cloud.platform (semantic-convention values)
ORIGIN_PLATFORMS = {
    "AWS::EC2::Instance": "aws_ec2",
    "AWS::ECS::Container": "aws_ecs",
    "AWS::ECS::Fargate": "aws_ecs",
    "AWS::EKS::Container": "aws_eks",
    "AWS::ElasticBeanstalk::Environment": "aws_elastic_beanstalk",
    "AWS::Lambda": "aws_lambda",
    "AWS::Lambda::Function": "aws_lambda",
    "AWS::AppRunner::Service": "aws_app_runner",
}
# (aws sub-block, key) → resource attribute
AWS_RESOURCE_KEYS = {
    ("ec2", "availability_zone"): "cloud.availability_zone",
    ("ec2", "instance_id"): "host.id",
    ("ec2", "instance_size"): "host.type",
    ("ec2", "ami_id"): "host.image.id",
    ("ecs", "container"): "container.name",
    ("ecs", "container_id"): "container.id",
    ("ecs", "availability_zone"): "cloud.availability_zone",
    ("elastic_beanstalk", "environment_name"): "service.namespace",
    ("elastic_beanstalk", "deployment_id"): "service.instance.id",
    ("elastic_beanstalk", "version_label"): "service.version",
    ("eks", "cluster_name"): "k8s.cluster.name",
    ("eks", "pod"): "k8s.pod.name",
    ("eks", "container_id"): "container.id",
    ("xray", "sdk"): "telemetry.sdk.name",
    ("xray", "sdk_version"): "telemetry.sdk.version",
}
SERVICE_RESOURCE_KEYS = {
    "version": "service.version",
    "runtime": "process.runtime.name",
    "runtime_version": "process.runtime.version",
}
# span-level aws keys with a name in the OTel X-Ray translator; others become aws.<key>
AWS_SPAN_KEYS = {"retries": "aws.xray.retries"}
DB_SYSTEMS = {
    "postgresql": "postgresql",
    "mysql": "mysql",
    "mariadb": "mariadb",
    "microsoft sql server": "mssql",
    "sql server": "mssql",
    "oracle": "oracle",
}
_DB_URL = re.compile(
    r"^(?:jdbc:)?(?:[\w+.-]+://)?(?:[^@/]*@)?(?P<host>[^:/?;]+)(?::(?P<port>\d+))?"
    r"(?:/(?P<db>[^?;]*))?"
)


def resource_of(doc: Mapping[str, Any], service: str | None) -> dict[str, Any]:
    """Resource attributes of a segment document (shared by its subsegments)."""
    res: dict[str, Any] = {"service.name": service} if service else {}
    aws = doc.get("aws") if isinstance(doc.get("aws"), dict) else {}
    origin = doc.get("origin")
    if aws or (isinstance(origin, str) and origin.startswith("AWS::")):
        res["cloud.provider"] = "aws"
    if origin:
        res["xray.origin"] = origin
        if origin in ORIGIN_PLATFORMS:
            res["cloud.platform"] = ORIGIN_PLATFORMS[origin]
    if aws.get("account_id"):
        res["cloud.account.id"] = str(aws["account_id"])
    for (block, key), name in AWS_RESOURCE_KEYS.items():
        value = (aws.get(block) or {}).get(key) if isinstance(aws.get(block), dict) else None
        if value not in (None, ""):
            res[name] = str(value)
    service_block = doc.get("service") if isinstance(doc.get("service"), dict) else {}
    for key, value in service_block.items():
        if isinstance(value, str | int | float | bool):
            res[SERVICE_RESOURCE_KEYS.get(key, f"xray.service.{key}")] = plain(value)
    if doc.get("resource_arn"):
        res["cloud.resource_id"] = doc["resource_arn"]
    return res


def span_attributes(obj: Mapping[str, Any], is_segment: bool) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    namespace = obj.get("namespace")
    remote = not is_segment and namespace in ("aws", "remote")
    if namespace:
        attrs["xray.namespace"] = namespace
    if obj.get("type"):
        attrs["xray.type"] = obj["type"]
    if obj.get("inferred"):
        attrs["xray.inferred"] = True
    if remote and obj.get("name"):
        attrs["peer.service"] = obj["name"]  # the downstream node in X-Ray's service map
    if obj.get("user"):
        attrs["enduser.id"] = obj["user"]
    if "traced" in obj:
        attrs["xray.traced"] = bool(obj["traced"])
    for flag in ("error", "fault", "throttle"):
        if flag in obj:
            attrs[f"xray.{flag}"] = bool(obj[flag])
    if obj.get("precursor_ids"):
        attrs["xray.precursor_ids"] = [str(p) for p in obj["precursor_ids"]]
    _http(attrs, obj.get("http"), remote)
    _sql(attrs, obj.get("sql"))
    _aws(attrs, obj.get("aws"), obj.get("name"))
    for key, value in _items(obj.get("annotations")):
        attrs[f"xray.annotation.{key}"] = plain(value)
    for ns, values in _items(obj.get("metadata")):
        pairs = _items(values) if isinstance(values, dict) else [(None, values)]
        for key, value in pairs:
            name = f"xray.metadata.{ns}" if key is None else f"xray.metadata.{ns}.{key}"
            attrs[name] = to_json(value)
    return attrs


def _items(value: Any) -> list[tuple[str, Any]]:
    return list(value.items()) if isinstance(value, dict) else []


def _http(attrs: dict[str, Any], http: Any, remote: bool) -> None:
    if not isinstance(http, dict):
        return
    request = http.get("request") if isinstance(http.get("request"), dict) else {}
    response = http.get("response") if isinstance(http.get("response"), dict) else {}
    _put(attrs, "http.request.method", request.get("method"))
    _put(attrs, "url.full", request.get("url"))
    _put(attrs, "user_agent.original", request.get("user_agent"))
    _put(attrs, "client.address", request.get("client_ip"))
    if "x_forwarded_for" in request:
        attrs["xray.http.x_forwarded_for"] = bool(request["x_forwarded_for"])
    if "traced" in request:
        attrs["xray.traced"] = bool(request["traced"])
    if remote and request.get("url"):
        _server_from_url(attrs, str(request["url"]))
    if response.get("status") is not None:
        attrs["http.response.status_code"] = int(response["status"])
    if response.get("content_length") is not None:
        attrs["http.response.body.size"] = int(response["content_length"])


def _server_from_url(attrs: dict[str, Any], url: str) -> None:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return
    _put(attrs, "server.address", parts.hostname)
    if port:
        attrs["server.port"] = port


def _sql(attrs: dict[str, Any], sql: Any) -> None:
    if not isinstance(sql, dict):
        return
    _put(attrs, "db.statement", sql.get("sanitized_query"))
    if sql.get("database_type"):
        attrs["db.system"] = db_system(str(sql["database_type"]))
    _put(attrs, "db.user", sql.get("user"))
    url = sql.get("url") or sql.get("connection_string")
    if url:
        attrs["db.connection_string"] = str(url)
        match = _DB_URL.match(str(url))
        if match and match["host"]:
            attrs["server.address"] = match["host"]
            if match["port"]:
                attrs["server.port"] = int(match["port"])
            if match["db"]:
                attrs["db.name"] = match["db"]
    for key in ("database_version", "driver_version", "preparation"):
        _put(attrs, f"xray.sql.{key}", sql.get(key))


def db_system(database_type: str) -> str:
    """X-Ray's free-text database type → the semantic-convention ``db.system`` value."""
    key = database_type.strip().lower()
    return DB_SYSTEMS.get(key) or re.sub(r"\W+", "", key)


def _aws(attrs: dict[str, Any], aws: Any, name: Any) -> None:
    if not isinstance(aws, dict):
        return
    for key, value in aws.items():
        if isinstance(value, dict) or value is None:
            continue  # ec2/ecs/elastic_beanstalk/eks/xray describe the resource
        attrs[AWS_SPAN_KEYS.get(key, f"aws.{key}")] = plain(value)
    if aws.get("operation"):
        attrs["rpc.system"] = "aws-api"
        attrs["rpc.method"] = str(aws["operation"])
        if name:
            attrs["rpc.service"] = str(name)
            attrs["aws.service"] = str(name)


def exception_attributes(exc: Any) -> dict[str, Any]:
    """An X-Ray exception → the attributes of an OTel ``exception`` event."""
    if not isinstance(exc, dict):
        return {"exception.message": str(exc)}
    attrs: dict[str, Any] = {}
    _put(attrs, "exception.type", exc.get("type"))
    _put(attrs, "exception.message", exc.get("message"))
    _put(attrs, "xray.exception.id", exc.get("id"))
    for key in ("remote", "truncated", "skipped", "cause"):
        if exc.get(key) is not None:
            attrs[f"xray.exception.{key}"] = plain(exc[key])
    frames = [f for f in exc.get("stack") or () if isinstance(f, dict)]
    if frames:
        lines = [f"{exc.get('type') or ''}: {exc.get('message') or ''}"]
        for frame in frames:
            line = frame.get("line", "<unknown>")
            lines.append(f"\tat {frame.get('label') or ''}({frame.get('path') or ''}:{line})")
        attrs["exception.stacktrace"] = "\n".join(lines)
    return attrs


def _put(attrs: dict[str, Any], key: str, value: Any) -> None:
    if value not in (None, ""):
        attrs[key] = plain(value)


def plain(value: Any) -> Any:
    """Decimals from the exact parser back to floats for attribute values."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def to_json(value: Any) -> str:
    return orjson.dumps(
        value, default=lambda v: float(v) if isinstance(v, Decimal) else str(v)
    ).decode()
