"""Parsing a request head and encoding a response: the server's pure steps."""

from __future__ import annotations

import pytest

from shieldaudit.sidecar.http import HttpError, Response, encode_response, parse_request


def test_request_line_headers_and_keep_alive():
    """Method, decoded path, raw query, lower-cased headers (repeats joined), keep-alive."""
    request = parse_request(
        b"GET /met%72ics?name[]=a&name[]=b HTTP/1.1",
        [b"Host: t", b"Accept:  text/plain ", b"accept: application/openmetrics-text"],
    )
    assert (request.method, request.path, request.query) == ("GET", "/metrics", "name[]=a&name[]=b")
    assert request.headers == {
        "host": "t",
        "accept": "text/plain, application/openmetrics-text",
    }
    assert request.keep_alive
    assert request.content_length == 0


@pytest.mark.parametrize(
    ("version", "connection", "keep_alive"),
    [
        (b"HTTP/1.1", None, True),
        (b"HTTP/1.1", b"Connection: Close", False),
        (b"HTTP/1.1", b"Connection: keep-alive, Upgrade", True),
        (b"HTTP/1.0", None, False),
        (b"HTTP/1.0", b"Connection: Keep-Alive", True),
    ],
)
def test_keep_alive_follows_version_and_connection(version, connection, keep_alive):
    """HTTP/1.1 keeps the connection unless 'close'; HTTP/1.0 only with 'keep-alive'."""
    headers = [connection] if connection else []
    assert parse_request(b"GET / " + version, headers).keep_alive is keep_alive


def test_absolute_form_target():
    """A proxy-style absolute URL is reduced to its path and query."""
    request = parse_request(b"GET http://host:9469/readyz?x=1 HTTP/1.1", [])
    assert (request.path, request.query) == ("/readyz", "x=1")


@pytest.mark.parametrize(
    ("line", "headers", "status"),
    [
        (b"GET /", [], 400),
        (b"GET  / HTTP/1.1", [], 400),
        (b"G(T / HTTP/1.1", [], 400),
        (b"GET / HTTP/3.0", [], 505),
        (b"GET / HTTP/1.1x", [], 400),
        (b"GET /\x7f HTTP/1.1", [], 400),
        (b"GET ftp://h/ HTTP/1.1", [], 400),
        (b"GET / HTTP/1.1", [b"NoColon"], 400),
        (b"GET / HTTP/1.1", [b"Name : v"], 400),
        (b"GET / HTTP/1.1", [b" folded: v"], 400),
        (b"GET / HTTP/1.1", [b"X: a\x00b"], 400),
        (b"GET / HTTP/1.1", [b"Content-Length: -1"], 400),
        (b"GET / HTTP/1.1", [b"Content-Length: 3", b"Content-Length: 4"], 400),
        (b"GET / HTTP/1.1", [b"Transfer-Encoding: chunked"], 501),
    ],
)
def test_malformed_requests(line, headers, status):
    """Each malformed head raises HttpError with the status the client gets."""
    with pytest.raises(HttpError) as caught:
        parse_request(line, headers)
    assert caught.value.status == status


def test_same_content_length_twice_is_one():
    """Repeated identical Content-Length values are accepted as one (RFC 9110)."""
    request = parse_request(b"GET / HTTP/1.1", [b"Content-Length: 3", b"Content-Length: 3"])
    assert request.content_length == 3


def test_encode_response_head_and_connection_headers():
    """Content-Length is always the body's; HEAD leaves the body out; close is announced."""
    response = Response(200, [("Content-Type", "text/plain")], b"ok\n", close=True)
    full = encode_response(response, head_only=False, keep_alive_header=False)
    head = encode_response(response, head_only=True, keep_alive_header=False)
    assert full.startswith(b"HTTP/1.1 200 OK\r\nDate: ")
    assert full.endswith(b"\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
    assert full == head + b"ok\n"
    kept = encode_response(Response(404), head_only=False, keep_alive_header=True)
    assert kept.endswith(b"\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n")
