"""Deadlines for slow clients: a connection must send its request headers, then its body, in time.

uvicorn closes idle keep-alive connections (`timeout_keep_alive`) but has no deadline for a
request that has started to arrive: a client that sends half its headers, or stops halfway
through a body, holds its connection (and, mid-body, a waiting request task) for as long as it
likes, and a few hundred such sockets are a cheap denial of service. This protocol class is the
one uvicorn would pick anyway (httptools, or h11 without it) with two timers added:

- headers: from the moment a connection opens, or from the first byte of a later request on a
  kept-alive connection, the headers must be complete within `header_timeout` seconds, or the
  connection is closed (no response: the request is not known yet);
- body: from the end of the headers, the whole body must arrive within `body_timeout` seconds,
  or the client gets a 408 with the usual JSON error body and the connection is closed. A total
  deadline rather than an idle one, so that a body dripped one byte at a time cannot hold the
  connection either.

uvicorn builds one instance per connection from `uvicorn.Config(http=...)`; `protocol_class`
makes a subclass carrying the configured timeouts, passed through LitServe's `server.run`.
"""

from __future__ import annotations

import asyncio
import json

from uvicorn.protocols.http.auto import AutoHTTPProtocol

from serving.errors import error_body


class SlowClientProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]  # a class chosen at import
    """uvicorn's HTTP/1.1 protocol with header and body deadlines (see the module docstring).

    It relies only on what both uvicorn implementations share: `self.cycle` is replaced by a new
    request/response cycle when a request's headers are complete, the cycle's `more_body` turns
    False once its body is complete, and `on_response_complete` runs after each response."""

    header_timeout: float = 10.0
    body_timeout: float = 30.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._seen_cycle = self.cycle  # the cycle whose headers this class has accounted for
        self._awaiting_headers = True
        self._arm(self.header_timeout, self._headers_late)

    def data_received(self, data: bytes) -> None:
        if self._awaiting_headers and self._deadline is None:  # first byte of a request on a kept-alive connection
            self._arm(self.header_timeout, self._headers_late)
        super().data_received(data)
        self._track()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._cancel()
        self._awaiting_headers = True  # the keep-alive timer covers the idle time until the next request
        self._track()  # a pipelined request may have started inside super()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        super().connection_lost(exc)

    def _track(self) -> None:
        """Move the deadline along with the request: headers done -> body deadline; body done -> none."""
        cycle = self.cycle
        if cycle is None:
            return
        if cycle is not self._seen_cycle:
            self._seen_cycle = cycle
            self._awaiting_headers = False
            self._cancel()
            if cycle.more_body:
                self._arm(self.body_timeout, self._body_late)
        elif not cycle.more_body and not self._awaiting_headers:
            self._cancel()

    def _arm(self, seconds: float, callback: object) -> None:
        self._cancel()
        self._deadline = self.loop.call_later(seconds, callback)

    def _cancel(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _headers_late(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()

    def _body_late(self) -> None:
        self._deadline = None
        cycle = self.cycle
        if self.transport.is_closing() or cycle is None or not cycle.more_body:
            return
        if not cycle.response_started:
            message = f"the request body did not arrive within {self.body_timeout:g} s"
            body = json.dumps(error_body(408, message)).encode()
            head = (
                "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
            )
            self.transport.write(head.encode() + body)
        # The request's task, waiting for the rest of the body, gets http.disconnect and ends.
        self.transport.close()


def protocol_class(header_timeout: float, body_timeout: float) -> type[SlowClientProtocol]:
    """The protocol class for `uvicorn.Config(http=...)` with these deadlines, in seconds."""
    return type(
        "ConfiguredSlowClientProtocol", (SlowClientProtocol,), {"header_timeout": header_timeout, "body_timeout": body_timeout}
    )
