"""The ``tracelens serve`` click command (registered by ``tracelens.cli``)."""

from __future__ import annotations

import sys

import click

from tracelens.receiver.server import (
    DEFAULT_GRPC_PORT,
    DEFAULT_HOST,
    DEFAULT_HTTP_PORT,
    DEFAULT_MAX_REQUEST_BYTES,
)


def _default_db() -> str:
    from tracelens.store import default_db_path

    return default_db_path()


@click.command("serve")
@click.option(
    "--db",
    type=click.Path(dir_okay=False),
    default=_default_db,
    help="DuckDB store (default: $TRACELENS_DB or ./tracelens.duckdb).",
)
@click.option(
    "--host",
    default=DEFAULT_HOST,
    show_default=True,
    help="Address to listen on (both ports). Non-loopback: use TLS and a token.",
)
@click.option(
    "--grpc-port",
    type=click.IntRange(0, 65535),
    default=DEFAULT_GRPC_PORT,
    show_default=True,
    help="OTLP/gRPC port (0 = any free port).",
)
@click.option(
    "--http-port",
    type=click.IntRange(0, 65535),
    default=DEFAULT_HTTP_PORT,
    show_default=True,
    help="OTLP/HTTP and read-API port (0 = any free port).",
)
@click.option(
    "--max-request-bytes",
    type=click.IntRange(1024),
    default=DEFAULT_MAX_REQUEST_BYTES,
    show_default=True,
    help="Largest request accepted, measured after decompression.",
)
@click.option(
    "--max-pending-spans",
    type=click.IntRange(1),
    default=None,
    help="Spans waiting for a commit before requests are refused as retryable (default 100000).",
)
@click.option(
    "--decode-workers",
    type=click.IntRange(0, 64),
    default=None,
    help="Processes decoding OTLP/gRPC requests (default: CPUs - 1, at most 4; 0 = in the "
    "server process).",
)
@click.option(
    "--tls-cert",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="PEM certificate: serve TLS on both ports.",
)
@click.option(
    "--tls-key",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="PEM private key for --tls-cert.",
)
@click.option(
    "--auth-token-file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Require 'Authorization: Bearer <token>' (token = the file's first line; "
    "or set $TRACELENS_AUTH_TOKEN).",
)
def serve(
    db: str,
    host: str,
    grpc_port: int,
    http_port: int,
    max_request_bytes: int,
    max_pending_spans: int | None,
    decode_workers: int | None,
    tls_cert: str | None,
    tls_key: str | None,
    auth_token_file: str | None,
) -> None:
    """Receive OTLP traces (gRPC :4317, HTTP :4318) into the store until Ctrl-C/SIGTERM."""
    from tracelens.errors import TracelensError
    from tracelens.receiver.auth import load_token
    from tracelens.receiver.server import ServeConfig, default_decode_workers, run

    try:
        config = ServeConfig(
            db=db,
            host=host,
            grpc_port=grpc_port,
            http_port=http_port,
            max_request_bytes=max_request_bytes,
            tls_cert=tls_cert,
            tls_key=tls_key,
            token=load_token(auth_token_file),
            token_file=auth_token_file,
            max_pending_spans=max_pending_spans,
            decode_workers=default_decode_workers() if decode_workers is None else decode_workers,
        )
        code = run(config)
    except TracelensError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    sys.exit(code)


if __name__ == "__main__":
    serve()
