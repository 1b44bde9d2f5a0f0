"""An S3 endpoint on loopback for the bucket tests: moto's threaded server on a free port."""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def s3_server() -> Iterator[str]:
    """``http://127.0.0.1:PORT`` of a moto S3 server, stopped on exit."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port())
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
