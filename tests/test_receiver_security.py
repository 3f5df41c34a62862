"""TLS on both ports and the bearer token, on a real server: exporters, the read API, the CLI."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from opentelemetry.sdk.trace.export import SpanExportResult
from receiver_support import EXPORT_PATH, ServerProcess, sdk_spans, start_server, synthetic_request

from tracelens.access import RemoteReader, open_reader, read_state, state_path
from tracelens.errors import StoreError
from tracelens.receiver.server import ServeConfig, exposure_warning

TOKEN = "tl-test-9f8e7d6c5b4a"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, certs: tuple[Path, Path]):
    cert, key = certs
    folder = tmp_path_factory.mktemp("secure")
    token_file = folder / "token"
    token_file.write_text(TOKEN + "\n")
    proc = start_server(
        folder / "secure.duckdb", "--tls-cert", str(cert), "--tls-key", str(key),
        "--auth-token-file", str(token_file),
    )  # fmt: skip
    yield proc
    proc.stop()


def _grpc_exporter(server: ServerProcess, cert: Path, token: str | None):
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    headers = {"authorization": f"Bearer {token}"} if token else None
    return OTLPSpanExporter(
        endpoint=server.grpc, credentials=credentials, headers=headers, timeout=5
    )


def test_endpoints_are_tls(server: ServerProcess) -> None:
    assert server.http.startswith("https://")
    assert read_state(server.db).tls_cert  # type: ignore[union-attr]


def test_grpc_exporter_with_tls_and_token_is_accepted(
    server: ServerProcess, certs: tuple[Path, Path]
) -> None:
    exporter = _grpc_exporter(server, certs[0], TOKEN)
    spans = sdk_spans(6, service="tls-grpc")
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    exporter.shutdown()


def test_grpc_without_or_with_wrong_token_is_unauthenticated(
    server: ServerProcess, certs: tuple[Path, Path]
) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=certs[0].read_bytes())
    body, _ = synthetic_request(3)
    with grpc.secure_channel(server.grpc, credentials) as channel:
        call = channel.unary_unary(EXPORT_PATH)
        for metadata in ((), (("authorization", "Bearer wrong-guess"),)):
            with pytest.raises(grpc.RpcError) as err:
                call(body, metadata=metadata, timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "wrong-guess" not in err.value.details() and TOKEN not in err.value.details()


def test_grpc_without_tls_cannot_talk_to_the_server(server: ServerProcess) -> None:
    body, _ = synthetic_request(1)
    with grpc.insecure_channel(server.grpc) as channel:
        with pytest.raises(grpc.RpcError) as err:
            channel.unary_unary(EXPORT_PATH)(body, timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_http_exporter_with_tls_and_token_is_accepted(
    server: ServerProcess, certs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    # requests lets these variables override the exporter's certificate_file.
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    exporter = OTLPSpanExporter(
        endpoint=server.http + "/v1/traces", certificate_file=str(certs[0]),
        headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5,
    )  # fmt: skip
    assert exporter.export(sdk_spans(4, service="tls-http")) is SpanExportResult.SUCCESS
    exporter.shutdown()


def _https(server: ServerProcess, cert: Path, path: str, token: str | None, data=None):
    context = ssl.create_default_context(cafile=str(cert))
    headers = {"Content-Type": "application/x-protobuf"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(server.http + path, data=data, headers=headers)
    return urllib.request.urlopen(request, timeout=10, context=context)


@pytest.mark.parametrize("path", ["/v1/traces", "/api/v1/count", "/api/v1/traces"])
def test_http_and_read_api_need_the_token(
    server: ServerProcess, certs: tuple[Path, Path], path: str
) -> None:
    data = synthetic_request(2)[0] if path == "/v1/traces" else None
    for token in (None, "wrong-guess"):
        with pytest.raises(urllib.error.HTTPError) as err:
            _https(server, certs[0], path, token, data)
        assert err.value.code == 401
        body = err.value.read()
        assert b"wrong-guess" not in body and TOKEN.encode() not in body
    with _https(server, certs[0], path, TOKEN, data) as reply:
        assert reply.status == 200


def test_health_needs_no_token(server: ServerProcess, certs: tuple[Path, Path]) -> None:
    with _https(server, certs[0], "/api/v1/health", None) as reply:
        assert json.loads(reply.read())["pid"] == server.pid


def test_state_file_never_holds_the_token(server: ServerProcess) -> None:
    text = state_path(server.db).read_text()
    assert TOKEN not in text
    assert json.loads(text)["token_required"] is True


def test_local_reader_finds_the_token_file_and_pins_the_certificate(
    server: ServerProcess, certs: tuple[Path, Path]
) -> None:
    exporter = _grpc_exporter(server, certs[0], TOKEN)
    assert exporter.export(sdk_spans(5, service="tls-read")) is SpanExportResult.SUCCESS
    exporter.shutdown()
    with open_reader(server.db) as reader:
        assert isinstance(reader, RemoteReader)
        services = reader.scan(["service"]).column(0).to_pylist()
    assert services.count("tls-read") == 5


def test_reader_with_a_wrong_token_gets_a_clear_error(server: ServerProcess) -> None:
    state = read_state(server.db)
    assert state is not None
    with pytest.raises(StoreError, match="TRACELENS_AUTH_TOKEN") as err:
        RemoteReader(state, token="wrong-guess").count_spans()
    assert "wrong-guess" not in str(err.value)


def test_cli_reads_through_the_tls_server(server: ServerProcess) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tracelens", "traces", "--format", "json", "--db", server.db],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)


@pytest.mark.parametrize(
    ("host", "tls", "token", "missing"),
    [
        ("127.0.0.1", False, False, None),
        ("::1", False, False, None),
        ("localhost", False, False, None),
        ("0.0.0.0", False, False, "TLS or an auth token"),
        ("10.1.2.3", True, False, "an auth token"),
        ("10.1.2.3", False, True, "TLS"),
        ("0.0.0.0", True, True, None),
    ],
)
def test_non_loopback_without_tls_or_token_warns(
    host: str, tls: bool, token: bool, missing: str | None
) -> None:
    config = ServeConfig(
        db="x", host=host, tls_cert="c" if tls else None, tls_key="k" if tls else None,
        token="t" if token else None,
    )  # fmt: skip
    warning = exposure_warning(config)
    if missing is None:
        assert warning is None
    else:
        assert warning is not None and f"without {missing}:" in warning


def test_loopback_server_prints_no_warning(server: ServerProcess) -> None:
    assert "warning" not in server.stderr()


def test_token_comes_from_the_file_first_then_the_environment(tmp_path: Path) -> None:
    from tracelens.errors import ReceiverError
    from tracelens.receiver.auth import TOKEN_ENV, TokenCheck, load_token

    token_file = tmp_path / "token"
    token_file.write_text("  from-file  \nsecond line\n")
    assert load_token(str(token_file), env={TOKEN_ENV: "from-env"}) == "from-file"
    assert load_token(None, env={TOKEN_ENV: " from-env "}) == "from-env"
    assert load_token(None, env={}) is None
    token_file.write_text("\n")
    with pytest.raises(ReceiverError, match="empty"):
        load_token(str(token_file), env={})
    check = TokenCheck("abc")
    assert check.accepts("Bearer abc") and check.accepts("bearer  abc ")
    assert not any(check.accepts(h) for h in (None, "", "abc", "Basic abc", "Bearer abcd"))
    assert TokenCheck(None).accepts(None)
