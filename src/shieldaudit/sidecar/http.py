"""The sidecar's HTTP endpoints: ``/metrics``, ``/healthz`` and ``/readyz``.

One thread runs an :mod:`asyncio` loop that accepts and reads every
connection; a connection costs a few kilobytes, never a thread. ``/metrics``
is prometheus_client's own WSGI app (content negotiation from ``Accept``,
OpenMetrics, gzip, ``?name[]=``), called in one worker thread so a render never
holds up accepting or reading. :func:`serve` binds before returning (so a port
in use is an error at start) and returns a handle with the bound port and
``close()``.

What a client can hold is bounded: a request's head must arrive within the
timeout (else ``408`` and close; an idle keep-alive connection is just
closed), its lines and size are capped (``414``/``431``), and past the
connection cap the longest-waiting reader is dropped for the newcomer.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import re
import resource
import socket
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING, Final
from urllib.parse import unquote, urlsplit

from prometheus_client.exposition import gzip_accepted, make_wsgi_app

from shieldaudit.core.errors import ShieldAuditError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from prometheus_client import CollectorRegistry

log = logging.getLogger("shieldaudit.sidecar")

#: Listen backlog asked for; the kernel caps it at ``net.core.somaxconn``.
BACKLOG: Final = 4096
#: Seconds a client has to send a request's head (and to read the answer).
DEFAULT_TIMEOUT_S: Final = 5.0
#: Longest request line, and longest header line (bytes, line end included).
MAX_LINE: Final = 8192
#: All header lines of one request together.
MAX_HEAD: Final = 32 * 1024
MAX_HEADERS: Final = 100
#: A request body (meaningless here) up to this size is read and dropped.
MAX_BODY: Final = 64 * 1024
#: Connections allowed at once, at most; fewer when the descriptor limit is low.
MAX_CONNECTIONS: Final = 10_000
#: Descriptors left for everything else (trails, checkpoint, inotify, listener).
RESERVED_FDS: Final = 256

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION = re.compile(rb"HTTP/(\d)\.(\d)")
_BAD_TARGET = re.compile(rb"[\x00-\x20\x7f]")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_METHODS: Final = ("GET", "HEAD")
_NOT_FOUND = b"not found: try /metrics, /healthz or /readyz\n"


class HttpError(Exception):
    """A request answered with an error status, then the connection closed."""

    def __init__(self, status: HTTPStatus, detail: str) -> None:
        """Keep the status and a one-line explanation (the response body)."""
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class Request:
    """A parsed request head."""

    method: str
    path: str
    query: str
    version: tuple[int, int]
    headers: dict[str, str]
    content_length: int
    keep_alive: bool


@dataclass
class Response:
    """What to send back; ``close`` ends the connection after it."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    close: bool = False


def parse_request(request_line: bytes, header_lines: Iterable[bytes]) -> Request:
    """Parse a request line and its header lines (line ends stripped) (pure).

    Raises:
        HttpError: malformed (400), an HTTP version other than 1.x (505), or a
            transfer coding, which no endpoint needs (501).
    """
    parts = request_line.split(b" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]):
        raise HttpError(HTTPStatus.BAD_REQUEST, "malformed request line")
    method, target, version_text = parts
    version = _VERSION.fullmatch(version_text)
    if version is None:
        raise HttpError(HTTPStatus.BAD_REQUEST, "malformed HTTP version")
    if version[1] != b"1":
        raise HttpError(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, "only HTTP/1.0 and 1.1 are served")
    if not target or _BAD_TARGET.search(target):
        raise HttpError(HTTPStatus.BAD_REQUEST, "malformed request target")
    text_target = target.decode("latin-1")
    if not text_target.startswith("/"):
        # The absolute form (a request through a proxy); anything else is not ours.
        split = urlsplit(text_target)
        if split.scheme not in {"http", "https"} or not split.netloc:
            raise HttpError(HTTPStatus.BAD_REQUEST, "malformed request target")
        text_target = split.path or "/"
        text_target += f"?{split.query}" if split.query else ""
    path, _, query = text_target.partition("?")
    headers = _parse_headers(header_lines)
    if "transfer-encoding" in headers:
        raise HttpError(HTTPStatus.NOT_IMPLEMENTED, "transfer codings are not supported")
    connection = {token.strip().lower() for token in headers.get("connection", "").split(",")}
    minor = int(version[2])
    return Request(
        method=method.decode("ascii"),
        path=unquote(path, encoding="latin-1"),
        query=query,
        version=(1, minor),
        headers=headers,
        content_length=_content_length(headers.get("content-length")),
        keep_alive="keep-alive" in connection if minor == 0 else "close" not in connection,
    )


def _parse_headers(lines: Iterable[bytes]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in lines:
        name, colon, value = line.partition(b":")
        # No whitespace before the colon, no folded continuation lines: both
        # are how requests get smuggled past a proxy that reads them otherwise.
        if not colon or not _TOKEN.fullmatch(name):
            raise HttpError(HTTPStatus.BAD_REQUEST, "malformed header line")
        value = value.strip(b" \t")
        if _BAD_VALUE.search(value):
            raise HttpError(HTTPStatus.BAD_REQUEST, "control character in a header value")
        key = name.decode("ascii").lower()
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return headers


def _content_length(value: str | None) -> int:
    if value is None:
        return 0
    given = {v.strip() for v in value.split(",")}
    if len(given) != 1 or not next(iter(given)).isdigit():
        raise HttpError(HTTPStatus.BAD_REQUEST, "malformed Content-Length")
    return int(next(iter(given)))


def encode_response(response: Response, *, head_only: bool, keep_alive_header: bool) -> bytes:
    """Return the bytes of a response; a HEAD answer has the headers only (pure)."""
    status = HTTPStatus(response.status)
    lines = [f"HTTP/1.1 {status.value} {status.phrase}", f"Date: {formatdate(usegmt=True)}"]
    lines.extend(f"{name}: {value}" for name, value in response.headers)
    lines.append(f"Content-Length: {len(response.body)}")
    if response.close:
        lines.append("Connection: close")
    elif keep_alive_header:
        lines.append("Connection: keep-alive")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + response.body


@dataclass
class _Flight:
    """Renders of one kind of /metrics answer: whether one runs, who waits for the next."""

    running: bool = False
    waiting: list[tuple[asyncio.Future[Response], Request]] = field(default_factory=list)


def _text(status: int, body: bytes, *, close: bool = False) -> Response:
    return Response(status, [("Content-Type", "text/plain; charset=utf-8")], body, close)


class _WsgiCall:
    """Calls a WSGI app for one request and collects its whole answer."""

    def __init__(self, app: Callable[..., Iterable[bytes]], server_port: int) -> None:
        self.app = app
        self.server_port = server_port

    def __call__(self, request: Request) -> Response:
        environ: dict[str, object] = {
            # HEAD is answered as a GET whose body is not sent.
            "REQUEST_METHOD": "GET",
            "SCRIPT_NAME": "",
            "PATH_INFO": request.path,
            "QUERY_STRING": request.query,
            "SERVER_NAME": "localhost",
            "SERVER_PORT": str(self.server_port),
            "SERVER_PROTOCOL": f"HTTP/1.{request.version[1]}",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        for name, value in request.headers.items():
            key = name.upper().replace("-", "_")
            environ[key if key in {"CONTENT_TYPE", "CONTENT_LENGTH"} else f"HTTP_{key}"] = value
        started: list[tuple[str, list[tuple[str, str]]]] = []

        def start_response(
            status: str, headers: list[tuple[str, str]], _exc_info: object = None
        ) -> Callable[[bytes], None]:
            started.append((status, headers))
            return _no_write

        chunks = self.app(environ, start_response)
        try:
            body = b"".join(chunks)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        status, headers = started[-1]
        return Response(int(status.split(" ", 1)[0]), list(headers), body)


def _no_write(_data: bytes) -> None:
    msg = "the write() callable is not supported"
    raise NotImplementedError(msg)


def connection_cap(max_connections: int | None = None) -> int:
    """Return how many connections to hold at once: the cap, lowered to fit the fd limit."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fitting = soft - RESERVED_FDS if soft != resource.RLIM_INFINITY else MAX_CONNECTIONS
    wanted = MAX_CONNECTIONS if max_connections is None else max_connections
    return max(1, min(wanted, fitting))


class ServerHandle:
    """A running server: where it listens, and how to stop it."""

    def __init__(
        self,
        sock: socket.socket,
        *,
        registry: CollectorRegistry,
        ready: Callable[[], tuple[bool, str]],
        timeout: float,
        max_connections: int,
    ) -> None:
        """Take over a bound, listening socket; :meth:`start` serves it."""
        self._sock = sock
        self.port = int(sock.getsockname()[1])
        self._metrics = _WsgiCall(make_wsgi_app(registry), self.port)
        self._ready = ready
        self.timeout = timeout
        self.max_connections = max_connections
        # One worker renders; it is started now so the thread count never changes.
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="metrics-render")
        self._worker.submit(lambda: None).result()
        self._thread = threading.Thread(target=self._run, name="metrics-http", daemon=True)
        self._started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        #: Connections waiting for (or reading) a request, longest-waiting first.
        self._waiting: dict[asyncio.StreamWriter, None] = {}
        self._live: set[asyncio.StreamWriter] = set()
        self._flights: dict[tuple[str, str, str], _Flight] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def connections(self) -> int:
        """Return how many connections are held now."""
        return len(self._live)

    @property
    def waiting_for_render(self) -> int:
        """Return how many /metrics requests wait for the next render (not the running one)."""
        return sum(len(flight.waiting) for flight in list(self._flights.values()))

    def start(self) -> None:
        """Start the loop's thread; return once it accepts connections."""
        self._thread.start()
        if not self._started.wait(timeout=10):
            msg = "the metrics server did not start"
            raise ShieldAuditError(msg)

    def close(self) -> None:
        """Stop accepting, drop every connection, wait for the threads (bounded)."""
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stopping.set)
            self._thread.join(timeout=5)
        self._sock.close()
        self._worker.shutdown(wait=True, cancel_futures=True)

    # -- the loop's thread ---------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        finally:
            self._started.set()  # never leave start() waiting on a loop that failed

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(_log_loop_error)
        self._loop = loop
        self._stopping = asyncio.Event()
        server = await asyncio.start_server(
            self._connection, sock=self._sock, backlog=BACKLOG, limit=MAX_LINE
        )
        self._started.set()
        await self._stopping.wait()
        server.close()
        for writer in list(self._waiting):
            writer.transport.abort()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=1)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self._live.add(writer)
        try:
            if len(self._live) > self.max_connections and not self._evict():
                writer.transport.abort()
                return
            await self._serve(reader, writer)
        except (ConnectionError, OSError, EOFError, asyncio.CancelledError):
            pass  # the client went away (or the server is stopping): nothing to answer
        except Exception:
            log.exception("HTTP server: a connection failed")
        finally:
            self._live.discard(writer)
            self._waiting.pop(writer, None)
            if writer.transport.get_write_buffer_size():
                writer.transport.abort()  # an answer nobody reads is not kept
            else:
                writer.close()
            if task is not None:
                self._tasks.discard(task)

    def _evict(self) -> bool:
        """Drop the connection that has waited longest for its request; False if none."""
        for writer in self._waiting:
            del self._waiting[writer]
            self._live.discard(writer)  # counted out now, not when its task ends
            writer.transport.abort()
            return True
        return False

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            self._waiting[writer] = None  # evictable, and last in line
            received: list[bytes] = []
            try:
                async with asyncio.timeout(self.timeout):
                    head = await _read_head(reader, received)
            except TimeoutError:
                if received:  # half-sent: say so; an idle keep-alive just ends
                    await self._send(writer, _text(408, b"request timeout\n", close=True))
                return
            except HttpError as exc:
                await self._send(writer, _text(exc.status, f"{exc.detail}\n".encode(), close=True))
                return
            finally:
                self._waiting.pop(writer, None)
            if head is None:
                return
            response, request = await self._answer(reader, *head)
            head_only = request is not None and request.method == "HEAD"
            keep_header = request is not None and request.version == (1, 0) and not response.close
            await self._send(writer, response, head_only=head_only, keep_alive_header=keep_header)
            if response.close:
                return

    async def _answer(
        self, reader: asyncio.StreamReader, request_line: bytes, header_lines: list[bytes]
    ) -> tuple[Response, Request | None]:
        try:
            request = parse_request(request_line, header_lines)
            if request.content_length > MAX_BODY:
                return _text(413, b"request body too large\n", close=True), None
            if request.content_length:
                async with asyncio.timeout(self.timeout):
                    await reader.readexactly(request.content_length)
        except HttpError as exc:
            return _text(exc.status, f"{exc.detail}\n".encode(), close=True), None
        except TimeoutError:
            return _text(408, b"request timeout\n", close=True), None
        response = await self._route(request)
        if not request.keep_alive:
            response = replace(response, close=True)  # a rendered answer may be shared
        return response, request

    async def _route(self, request: Request) -> Response:
        if request.method not in _METHODS:
            response = _text(405, f"{request.method} not allowed: use GET or HEAD\n".encode())
            response.headers.append(("Allow", "GET, HEAD"))
            return response
        if request.path == "/metrics":
            return await self._render(request)
        if request.path == "/healthz":
            return _text(200, b"ok\n")
        if request.path == "/readyz":
            ok, why = self._ready()
            return _text(200 if ok else 503, (why + "\n").encode())
        return _text(404, _NOT_FOUND)

    async def _render(self, request: Request) -> Response:
        """Render /metrics in the worker, one render shared by the requests that waited for it.

        A request joins the next render of its kind (same format, encoding and
        filter), never one already under way, so every answer is a snapshot
        taken after the request arrived; 500 scrapes at once cost a few
        renders, not 500.
        """
        encoding = "gzip" if gzip_accepted(request.headers.get("accept-encoding", "")) else ""
        key = (request.headers.get("accept", ""), encoding, request.query)
        flight = self._flights.setdefault(key, _Flight())
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        flight.waiting.append((future, request))
        if not flight.running:
            self._launch(key, flight)
        return await future

    def _launch(self, key: tuple[str, str, str], flight: _Flight) -> None:
        batch, flight.waiting = flight.waiting, []
        flight.running = True
        work = asyncio.get_running_loop().run_in_executor(
            self._worker, self._render_now, batch[0][1]
        )

        def landed(done: asyncio.Future[Response]) -> None:
            flight.running = False
            response = None if done.cancelled() else done.result()
            for future, _request in batch:
                if future.done():  # its connection went away meanwhile
                    continue
                if response is None:
                    future.cancel()
                else:
                    future.set_result(response)
            if flight.waiting:
                self._launch(key, flight)
            else:
                self._flights.pop(key, None)

        work.add_done_callback(landed)

    def _render_now(self, request: Request) -> Response:
        """Call the WSGI app (in the worker thread); a failure is logged once, answered 500."""
        try:
            return self._metrics(request)
        except Exception:
            log.exception("rendering /metrics failed")
            return _text(500, b"rendering the metrics failed; see the sidecar's log\n")

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        response: Response,
        *,
        head_only: bool = False,
        keep_alive_header: bool = False,
    ) -> None:
        writer.write(
            encode_response(response, head_only=head_only, keep_alive_header=keep_alive_header)
        )
        # A client that does not read its answer is dropped like a slow sender.
        async with asyncio.timeout(self.timeout):
            await writer.drain()


async def _readline(reader: asyncio.StreamReader, too_long: HttpError) -> bytes | None:
    """Return one line without its line end (a bare LF ends a line too); None at EOF."""
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError:
        return None
    except asyncio.LimitOverrunError:
        raise too_long from None
    return line.rstrip(b"\r\n") if line.endswith(b"\r\n") else line[:-1]


async def _read_head(
    reader: asyncio.StreamReader, received: list[bytes]
) -> tuple[bytes, list[bytes]] | None:
    """Read a request line and its headers; ``received`` shows whether anything came.

    Returns None when the client closed before (or in the middle of) a request.
    """
    too_long_line = HttpError(HTTPStatus.REQUEST_URI_TOO_LONG, "request line too long")
    too_large = HttpError(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "request headers too large")
    size = 0
    while True:  # empty lines before a request are skipped (a client's stray CRLF)
        line = await _readline(reader, too_long_line)
        if line is None:
            return None
        received.append(line)
        size += len(line) + 2
        if line:
            break
        if size > MAX_LINE:
            raise HttpError(HTTPStatus.BAD_REQUEST, "no request line")
    request_line, size = line, 0
    headers: list[bytes] = []
    while True:
        line = await _readline(reader, too_large)
        if line is None:
            return None
        if not line:
            return request_line, headers
        size += len(line) + 2
        headers.append(line)
        if size > MAX_HEAD or len(headers) > MAX_HEADERS:
            raise too_large


def _log_loop_error(_loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
    """One warning line per loop error (out of descriptors, say), no traceback."""
    exc = context.get("exception")
    log.warning("HTTP server: %s%s", context.get("message"), f": {exc}" if exc else "")


def serve(
    registry: CollectorRegistry,
    ready: Callable[[], tuple[bool, str]],
    addr: str = "127.0.0.1",
    port: int = 9469,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    max_connections: int | None = None,
) -> ServerHandle:
    """Bind, start serving in a thread, and return the handle.

    Args:
        registry: what ``/metrics`` renders.
        ready: returns ``(ready, reason)`` for ``/readyz``.
        addr: address to bind (loopback by default: metrics are not for the world).
        port: port to bind; 0 picks a free one.
        timeout: seconds a client has to send a request head, or to take its answer.
        max_connections: connections held at once (default: 10,000, or fewer
            to fit the open-file limit).

    Raises:
        ShieldAuditError: the address cannot be bound (in use, or not local).
    """
    shown = f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"
    try:
        infos = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _name, where = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ShieldAuditError(
            f"cannot listen on {shown}: {getattr(exc, 'strerror', None) or exc}; "
            "choose another --metrics-addr/--metrics-port",
        ) from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(where)
        sock.listen(BACKLOG)
        sock.setblocking(False)  # noqa: FBT003 -- the socket API
    except OSError as exc:
        sock.close()
        raise ShieldAuditError(
            f"cannot listen on {shown}: {exc.strerror or exc}; "
            "choose another --metrics-addr/--metrics-port",
        ) from None
    handle = ServerHandle(
        sock,
        registry=registry,
        ready=ready,
        timeout=timeout,
        max_connections=connection_cap(max_connections),
    )
    handle.start()
    return handle
