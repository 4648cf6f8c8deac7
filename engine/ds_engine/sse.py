"""An incremental Server-Sent Events decoder, for the streamed answers of model servers.

OpenAI-compatible servers (vLLM, llama.cpp's server, ``ds-engine serve``) stream a
completion as ``text/event-stream``: ``data: {json}`` events ending with
``data: [DONE]``. The bytes arrive in whatever pieces TCP and the server's flushes make,
so an event, a line, a CRLF pair or a multi-byte UTF-8 character can be split anywhere;
the decoder keeps the incomplete tail and only ever decodes whole lines. It follows the
WHATWG event-stream rules (``data`` lines of one event are joined with ``\\n``, a line
starting with ``:`` is a comment, lines end with CRLF, LF or CR, one space after the
colon is dropped, a leading byte-order mark is ignored) with one leniency: an event the
stream ends in without its blank line is still delivered by :meth:`SSEDecoder.close`
(some servers end with ``data: [DONE]\\n`` alone), where the standard would drop it.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass

# CR LF before the lone CR and LF, so that a CRLF pair is one line end.
_EOL = re.compile(rb"\r\n|\r|\n")
# A line this long is not an event stream (or a server gone wrong): stop, don't buffer.
DEFAULT_MAX_LINE_BYTES = 4 * 2**20


class SSEError(ValueError):
    """The bytes are not an event stream the decoder will read (a line too long)."""


@dataclass(frozen=True)
class SSEEvent:
    """One dispatched event: its type (``message`` unless an ``event:`` line said
    otherwise), its data (``data`` lines joined with newlines) and the last event id."""

    data: str
    event: str = "message"
    id: str | None = None


class SSEDecoder:
    """Feed it bytes as they come (:meth:`feed`), then :meth:`close` at the end of the
    stream; both return the events completed so far, in order."""

    def __init__(self, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        self.max_line_bytes = max_line_bytes
        self._buffer = b""
        self._data: list[str] = []
        self._event = ""
        self._last_id: str | None = None
        self._first_line = True

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """The events that ``chunk`` completes."""
        buffer = self._buffer + chunk
        events: list[SSEEvent] = []
        start = 0
        for match in _EOL.finditer(buffer):
            if match.group() == b"\r" and match.end() == len(buffer):
                break  # may be the first half of a CRLF split across two chunks
            self._line(buffer[start : match.start()], events)
            start = match.end()
        self._buffer = buffer[start:]
        if len(self._buffer) > self.max_line_bytes:
            raise SSEError(f"an event-stream line longer than {self.max_line_bytes} bytes")
        return events

    def close(self) -> list[SSEEvent]:
        """The events left at the end of the stream: a last line without its line end,
        and an event without its closing blank line (see the module docstring)."""
        events: list[SSEEvent] = []
        rest, self._buffer = self._buffer, b""
        if rest.endswith(b"\r"):
            rest = rest[:-1]
        if rest:
            self._line(rest, events)
        self._line(b"", events)
        return events

    def _line(self, raw: bytes, events: list[SSEEvent]) -> None:
        # The standard decodes with replacement: a bad byte never stops a stream.
        line = raw.decode("utf-8", errors="replace")
        if self._first_line:
            self._first_line = False
            line = line.removeprefix("\ufeff")
        if not line:
            if self._data:
                events.append(SSEEvent("\n".join(self._data), self._event or "message",
                                       self._last_id))
            self._data = []
            self._event = ""
            return
        if line.startswith(":"):
            return  # a comment (servers send them as keep-alives)
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
        elif field == "id" and "\0" not in value:
            self._last_id = value
        # "retry" and unknown fields are ignored, as the standard says.


async def aiter_events(
    chunks: AsyncIterable[bytes], max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> AsyncIterator[SSEEvent]:
    """The events of a stream of byte chunks (an HTTP response body), as they complete."""
    decoder = SSEDecoder(max_line_bytes)
    async for chunk in chunks:
        for event in decoder.feed(chunk):
            yield event
    for event in decoder.close():
        yield event
