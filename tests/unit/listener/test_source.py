"""Pins how the Podman side reports what is wrong with a URL or socket (listener.source)."""

from __future__ import annotations

import socket
import threading

import pytest

from shieldaudit.listener.source import PodmanSource, SourceUnavailable, reason


def serve_once(path, reply: bytes) -> threading.Thread:
    """A unix socket that answers one request with ``reply`` (after the probe connection)."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()

    def loop() -> None:
        with server:
            for _ in range(2):  # the listener's probe, then podman-py's request
                conn, _ = server.accept()
                with conn:
                    if conn.recv(65536):
                        conn.sendall(reply)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def test_missing_socket_says_so(tmp_path):
    """A socket path that does not exist gives 'No such file or directory' with the path."""
    path = tmp_path / "none.sock"

    with pytest.raises(SourceUnavailable, match=r"none\.sock: No such file or directory"):
        PodmanSource(f"unix://{path}").open(0)


def test_non_podman_http_server_is_named(tmp_path):
    """A socket that answers HTTP but not the events API is reported with its status."""
    path = tmp_path / "web.sock"
    thread = serve_once(path, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")

    with pytest.raises(SourceUnavailable, match=r"HTTP 404 .*is this a Podman API socket\?"):
        PodmanSource(f"unix://{path}").open(0)
    thread.join(5)


def test_bad_url_scheme_is_one_clear_reason():
    """A URL podman-py cannot use is refused with podman-py's reason."""
    with pytest.raises(SourceUnavailable, match=r"invalid Podman URL 'bogus'"):
        PodmanSource("bogus").open(0)


def test_reason_prefers_the_innermost_os_error():
    """podman-py's 'GET operation failed' hides the socket error; reason() digs it out."""
    outer = RuntimeError("GET operation failed")
    outer.__cause__ = ConnectionError("Connection aborted.")
    outer.__cause__.__cause__ = FileNotFoundError(2, "No such file or directory")

    assert reason(outer) == "No such file or directory"
    assert reason(ValueError("plain")) == "plain"
