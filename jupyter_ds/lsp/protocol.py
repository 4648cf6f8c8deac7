"""JSON-RPC that pygls alone would leave unanswered, answered as the specifications say.

pygls logs and drops a body that is not JSON, a message that is not a JSON-RPC object and a
request whose params do not fit its type, so the client waits forever for that id; and it
serves requests before ``initialize``. Here:

* a body that is not JSON: a ``ParseError`` (-32700) response with a null id;
* JSON that is not a JSON-RPC message: ``InvalidRequest`` (-32600), null id;
* a request whose params do not fit: ``InvalidParams`` (-32602) for its id;
* a request before ``initialize``: ``ServerNotInitialized`` (-32002) for its id.

Unknown methods are pygls' own ``MethodNotFound`` (-32601). None of these stops the server.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from lsprotocol import types
from pygls.exceptions import JsonRpcException, JsonRpcInvalidParams
from pygls.protocol import LanguageServerProtocol

log = logging.getLogger(__name__)

PARSE_ERROR = -32700
INVALID_REQUEST = -32600


class _Refused:
    """A request that could not be read as its type: answered with ``error``."""

    def __init__(self, msg_id: Any, error: JsonRpcException) -> None:
        self.id = msg_id
        self.error = error


class HardenedProtocol(LanguageServerProtocol):
    """pygls' protocol, answering what it would drop (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.initialize_seen = False

    def structure_message(self, data: dict[str, Any]) -> Any:
        try:
            return super().structure_message(data)
        except JsonRpcException as exc:
            msg_id = data.get("id")
            if "method" in data and isinstance(msg_id, (int, str)) and not isinstance(
                    msg_id, bool):
                return _Refused(msg_id, exc if isinstance(exc, JsonRpcInvalidParams)
                                else JsonRpcInvalidParams())
            raise

    def handle_message(self, message: Any) -> None:
        if isinstance(message, _Refused):
            self._send_response(message.id, None, message.error.to_response_error())
            return
        if not hasattr(message, "jsonrpc"):
            self.refuse(INVALID_REQUEST, "Invalid Request: not a JSON-RPC 2.0 message")
            return
        method = getattr(message, "method", None)
        msg_id = getattr(message, "id", None)
        if method is not None and msg_id is not None and method != types.INITIALIZE and (
                not self.initialize_seen and method != types.EXIT):
            self._send_response(msg_id, None, types.ResponseError(
                code=types.ErrorCodes.ServerNotInitialized,
                message=f"{method} before initialize: send initialize first"))
            return
        if method == types.INITIALIZE:
            self.initialize_seen = True
        super().handle_message(message)

    def _handle_cancel_notification(self, msg_id: Any) -> None:
        """Cancel the request, and the command task working for it: pygls runs a
        command as its own task, which cancelling the request alone leaves running."""
        cancel = getattr(self._server, "cancel_command", None)
        if callable(cancel):
            cancel(msg_id)
        super()._handle_cancel_notification(msg_id)

    def refuse(self, code: int, message: str) -> None:
        """An error response with a null id, for a message whose id cannot be known."""
        self._send_data({"jsonrpc": "2.0", "id": None,
                         "error": {"code": code, "message": message}})


def report_bad_message(protocol: HardenedProtocol, error: Exception) -> bool:
    """Answer a body that failed before it became a message; True if it was answered."""
    cause = error
    while cause is not None and not isinstance(cause, json.JSONDecodeError):
        cause = cause.__cause__ or cause.__context__  # type: ignore[assignment]
    if isinstance(cause, json.JSONDecodeError):
        protocol.refuse(PARSE_ERROR, f"Parse error: {cause.msg} at character {cause.pos}")
        return True
    if isinstance(error, (AttributeError, TypeError)):
        protocol.refuse(INVALID_REQUEST, "Invalid Request: not a JSON-RPC 2.0 message")
        return True
    return False


class ExpectedErrors(logging.Filter):
    """Drops pygls' tracebacks of errors answered on purpose (bad params, a document
    too large): they are the client's mistakes, answered as such, not server faults."""

    CODES = frozenset({int(types.ErrorCodes.InvalidParams),
                       int(types.LSPErrorCodes.RequestFailed),
                       int(types.LSPErrorCodes.RequestCancelled)})

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (isinstance(error, JsonRpcException) and error.code in self.CODES)


def quiet_expected_errors() -> None:
    logging.getLogger("pygls.protocol.json_rpc").addFilter(ExpectedErrors())
