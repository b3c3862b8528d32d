"""Helpers for the security tests: an HTTPS server in a thread."""

import socket
import threading
import time
from contextlib import contextmanager

import pytest
import uvicorn


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def run_https_server(app, certfile, keyfile, port: int | None = None):
    port = port or free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, ssl_certfile=str(certfile), ssl_keyfile=str(keyfile),
                            log_level="warning", lifespan="on", http="h11", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "test server did not start"
        time.sleep(0.02)
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def https_server():
    """``with https_server(app, certfile, keyfile) as url:`` serves ``app`` over TLS in a thread."""
    return run_https_server


@pytest.fixture
def unused_port() -> int:
    return free_port()
