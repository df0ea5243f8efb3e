"""The Podman side: open the events stream through podman-py, read lines, close from anywhere.

podman-py's ``client.events()`` hides its HTTP response inside a generator and
decodes every line itself, so a malformed line would end the stream and the
stream could not be interrupted from another thread. The listener therefore
sends the same request (``GET /events`` with ``stream``, ``since``, ``until``
and ``filters``, built by podman-py's own helpers) through the same
``PodmanClient`` and keeps the response: :meth:`PodmanStream.close` shuts the
socket down, which wakes a reader blocked in ``recv`` at once.

Every failure is translated here into :class:`SourceUnavailable` (could not
connect) or :class:`SourceLost` (the stream broke), each with a one-line reason.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import TYPE_CHECKING, Any, Final, Protocol

if TYPE_CHECKING:
    from collections.abc import Iterator

#: Bound on connecting and on waiting for the response headers; once the
#: stream is open, reads block without a timeout (an idle host sends nothing).
CONNECT_TIMEOUT_S: Final = 10.0
CONTAINER_FILTER: Final = {"type": "container"}


class SourceUnavailable(Exception):  # noqa: N818 -- reads as a state, like ConnectionRefused
    """The Podman service could not be reached or refused the request."""


class SourceLost(Exception):  # noqa: N818
    """An open events stream broke (the service stopped, the socket closed)."""


class EventStream(Protocol):
    """An open stream of event lines."""

    def lines(self) -> Iterator[bytes]:
        """Yield each non-empty line; raise SourceLost if the stream breaks.

        A clean end (``until`` reached, or :meth:`close`) just ends the iteration.
        """
        ...

    def close(self) -> None:
        """Stop the stream; callable from any thread, more than once."""
        ...

    def release(self) -> None:
        """Free what the stream holds; called once, by the reading thread, at the end."""
        ...


class EventSource(Protocol):
    """Something that opens event streams (the real Podman service, or a test fake)."""

    url: str

    def open(self, since: int | None, until: int | None = None) -> EventStream:
        """Open a stream of container events from ``since`` (whole seconds, inclusive)."""
        ...


class PodmanSource:
    """Container events from a Podman service, through podman-py."""

    def __init__(self, url: str, *, connect_timeout: float = CONNECT_TIMEOUT_S) -> None:
        """Remember the service URL (``unix:///run/podman/podman.sock``, ``tcp://…``)."""
        self.url = url
        self._connect_timeout = connect_timeout

    def open(self, since: int | None, until: int | None = None) -> PodmanStream:
        """Connect and start the stream; raise SourceUnavailable with the reason."""
        _probe_unix_socket(self.url, self._connect_timeout)
        from podman import PodmanClient  # noqa: PLC0415 -- heavy; only the listener needs it
        from podman import api as podman_api  # noqa: PLC0415

        try:
            client: Any = PodmanClient(base_url=self.url)
        except Exception as exc:  # podman-py raises several types for a bad URL
            raise SourceUnavailable(f"invalid Podman URL {self.url!r}: {reason(exc)}") from exc
        params = {
            "filters": podman_api.prepare_filters(CONTAINER_FILTER),
            "since": since,
            "until": until,
            "stream": True,
        }
        try:
            response = client.api.get(
                "/events",
                params=params,
                stream=True,
                timeout=(self._connect_timeout, self._connect_timeout),
            )
        except Exception as exc:  # APIError wraps the socket error; keep its innermost cause
            client.close()
            raise SourceUnavailable(reason(exc)) from exc
        if response.status_code != 200:
            status = response.status_code
            response.close()
            client.close()
            raise SourceUnavailable(f"HTTP {status} from {self.url}: is this a Podman API socket?")
        return PodmanStream(client, response)


class PodmanStream:
    """One open ``/events`` response."""

    def __init__(self, client: Any, response: Any) -> None:  # noqa: ANN401 -- untyped podman-py
        """Take over an open response; make its socket block without timeout from now on."""
        self._client = client
        self._response = response
        self._lock = threading.Lock()
        self._closed = False
        self._sock = _socket_of(response)
        if self._sock is not None:
            # The connect timeout applied to the headers; an idle stream is legitimate.
            self._sock.settimeout(None)

    def lines(self) -> Iterator[bytes]:
        """Yield each non-empty line as it arrives."""
        try:
            for line in self._response.iter_lines():
                if line:
                    yield line
        except Exception as exc:  # requests/urllib3 errors, OSError: all mean "broken"
            if self._closed:
                return
            raise SourceLost(reason(exc)) from exc

    def close(self) -> None:
        """Shut the socket down (waking a blocked reader), then release everything."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def release(self) -> None:
        """Free the response and client (only from the reading thread, after close)."""
        self.close()
        with contextlib.suppress(Exception):
            self._response.close()
        with contextlib.suppress(Exception):
            self._client.close()


def _probe_unix_socket(url: str, timeout: float) -> None:
    """Connect to a ``unix://`` socket once, to report a missing or dead one clearly.

    podman-py leaks the socket object of a failed connection (a ResourceWarning
    per retry while the service is away) and words every failure alike; a plain
    probe that closes its socket avoids both.
    """
    if not url.startswith("unix://"):
        return
    path = url.removeprefix("unix://")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(timeout)
        probe.connect(path)
    except OSError as exc:
        raise SourceUnavailable(f"{path}: {reason(exc)}") from None
    finally:
        probe.close()


def _socket_of(response: Any) -> socket.socket | None:  # noqa: ANN401
    """Find the connection's socket (urllib3 2.x keeps it on the raw response)."""
    connection = getattr(getattr(response, "raw", None), "connection", None)
    sock = getattr(connection, "sock", None)
    return sock if isinstance(sock, socket.socket) else None


def reason(exc: BaseException) -> str:
    """Return the most telling one-line reason in an exception chain.

    podman-py reports every connection failure as "GET operation failed"; the
    useful part ("No such file or directory", "Connection refused", a bad
    status line) is deeper: an OSError's text, else the innermost exception.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    innermost = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.strerror:
            return current.strerror
        innermost = current
        current = current.__cause__ or current.__context__
    text = str(innermost).strip()
    if innermost is not exc:
        text = f"{type(innermost).__name__}: {text}" if text else type(innermost).__name__
    return (text or type(exc).__name__).splitlines()[0][:200]
