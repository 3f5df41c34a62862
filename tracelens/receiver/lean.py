"""A lean copy of the OTLP trace schema, for upb to parse only what the decoder reads.

Each attribute ``KeyValue`` and each span event and link is declared as raw bytes: upb hands
back one ``bytes`` per attribute, and the decoder decodes each distinct encoding once
(attributes repeat across spans). Events and links are rare, so they are decoded only when
present (:data:`LeanEvent`, :data:`LeanLink`). Field numbers are those of opentelemetry-proto;
fields not declared here (schema urls, dropped counts, flags) are skipped by the parser.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto
_ONE, _MANY = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED

# name → [(field, number, type, label, message type)]
_LEAN = {
    "Request": [("resource_spans", 1, _F.TYPE_MESSAGE, _MANY, "ResourceSpans")],
    "ResourceSpans": [
        ("resource", 1, _F.TYPE_MESSAGE, _ONE, "Resource"),
        ("scope_spans", 2, _F.TYPE_MESSAGE, _MANY, "ScopeSpans"),
    ],
    "Resource": [("attributes", 1, _F.TYPE_BYTES, _MANY, None)],
    "ScopeSpans": [
        ("scope", 1, _F.TYPE_MESSAGE, _ONE, "Scope"),
        ("spans", 2, _F.TYPE_MESSAGE, _MANY, "Span"),
    ],
    "Scope": [("name", 1, _F.TYPE_STRING, _ONE, None), ("version", 2, _F.TYPE_STRING, _ONE, None)],
    "Span": [
        ("trace_id", 1, _F.TYPE_BYTES, _ONE, None),
        ("span_id", 2, _F.TYPE_BYTES, _ONE, None),
        ("trace_state", 3, _F.TYPE_STRING, _ONE, None),
        ("parent_span_id", 4, _F.TYPE_BYTES, _ONE, None),
        ("name", 5, _F.TYPE_STRING, _ONE, None),
        ("kind", 6, _F.TYPE_INT32, _ONE, None),  # an enum on the wire is an int32 varint
        ("start", 7, _F.TYPE_FIXED64, _ONE, None),
        ("end", 8, _F.TYPE_FIXED64, _ONE, None),
        ("attributes", 9, _F.TYPE_BYTES, _MANY, None),
        ("events", 11, _F.TYPE_BYTES, _MANY, None),
        ("links", 13, _F.TYPE_BYTES, _MANY, None),
        ("status", 15, _F.TYPE_MESSAGE, _ONE, "Status"),
    ],
    "Event": [
        ("time", 1, _F.TYPE_FIXED64, _ONE, None),
        ("name", 2, _F.TYPE_STRING, _ONE, None),
        ("attributes", 3, _F.TYPE_BYTES, _MANY, None),
    ],
    "Link": [
        ("trace_id", 1, _F.TYPE_BYTES, _ONE, None),
        ("span_id", 2, _F.TYPE_BYTES, _ONE, None),
        ("trace_state", 3, _F.TYPE_STRING, _ONE, None),
        ("attributes", 4, _F.TYPE_BYTES, _MANY, None),
    ],
    "Status": [("message", 2, _F.TYPE_STRING, _ONE, None), ("code", 3, _F.TYPE_INT32, _ONE, None)],
}


def _message_classes(schema: dict[str, list[tuple]], package: str) -> dict[str, type]:
    proto = descriptor_pb2.FileDescriptorProto(
        name=f"tracelens/{package}.proto", package=package, syntax="proto3"
    )
    for name, fields in schema.items():
        message = proto.message_type.add(name=name)
        for fname, number, ftype, label, type_name in fields:
            f = message.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = f".{package}.{type_name}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.{name}"))
        for name in schema
    }


_CLASSES = _message_classes(_LEAN, "tracelens.lean")
LeanRequest = _CLASSES["Request"]
LeanEvent = _CLASSES["Event"]
LeanLink = _CLASSES["Link"]
