"""One error hierarchy. Each class carries its HTTP status, OpenAI ``type`` and ``code``.

The body is always ``{"error": {"message", "type", "param", "code"}}``; the status comes
from the class, never from message text.
"""

from __future__ import annotations

from typing import Any


class SwitchyardError(Exception):
    """Base class: an error a client may see. Subclasses set the class attributes."""

    status: int = 500
    type: str = "server_error"
    code: str = "internal_error"
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers: dict[str, str] = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(SwitchyardError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class AuthenticationFailed(SwitchyardError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDenied(SwitchyardError):
    status = 403
    type = "permission_error"
    code = "model_not_allowed"


class NotFound(SwitchyardError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class MethodNotAllowed(SwitchyardError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class Conflict(SwitchyardError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class RequestTimeout(SwitchyardError):
    """The client did not send its request's headers or body in time (408); the server
    answers it and closes the connection."""

    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class PayloadTooLarge(SwitchyardError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class HeadersTooLarge(SwitchyardError):
    """The request's headers are larger, or more, than the server takes (431)."""

    status = 431
    type = "invalid_request_error"
    code = "request_headers_too_large"


class ClientDisconnected(SwitchyardError):
    """The client went away before its request was read (499, nginx's code): recorded in
    the ledger and the metrics, never sent (there is nobody to send it to)."""

    status = 499
    type = "invalid_request_error"
    code = "client_disconnected"


class RateLimited(SwitchyardError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after
        self.headers.setdefault("retry-after", str(max(1, int(retry_after + 0.999))))


class BudgetExceeded(SwitchyardError):
    """429 the official SDK does not retry: ``x-should-retry: false``."""

    status = 429
    type = "insufficient_quota"
    code = "team_budget_exceeded"

    def __init__(self, message: str, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.headers.setdefault("x-should-retry", "false")


class BackendError(SwitchyardError):
    """The backend answered with an error or garbage (502)."""

    status = 502
    type = "api_error"
    code = "backend_error"
    retryable = True


class BackendUnavailable(SwitchyardError):
    """No backend can take the request now (503)."""

    status = 503
    type = "api_error"
    code = "backend_unavailable"
    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        if retry_after is not None:
            self.headers.setdefault("retry-after", str(max(1, int(retry_after + 0.999))))


class Overloaded(BackendUnavailable):
    code = "backend_overloaded"


class BackendTimeout(SwitchyardError):
    status = 504
    type = "api_error"
    code = "backend_timeout"
    retryable = True


class ServiceUnavailable(SwitchyardError):
    """The gateway itself cannot serve (state store down, fail-closed; not ready)."""

    status = 503
    type = "api_error"
    code = "service_unavailable"


class StateUnavailable(ServiceUnavailable):
    """The shared state store (Redis) cannot be reached: connection refused, timeout.

    The one class for it: a store raises it with what failed (``detail``), and a caller
    that cannot go on without the store lets it through, or re-raises it ``because`` of
    what could not be done. A client gets 503 ``state_store_unavailable``, ``Retry-After: 1``."""

    code = "state_store_unavailable"

    def __init__(self, detail: str = "", *, consequence: str = "try again shortly",
                 **kw: Any) -> None:
        self.detail = detail or "The gateway's state store is unreachable"
        super().__init__(f"{self.detail}; {consequence}.", **kw)
        self.headers.setdefault("retry-after", "1")

    def because(self, consequence: str) -> StateUnavailable:
        """The same outage, saying what could not be done without the store."""
        return StateUnavailable(self.detail, consequence=consequence)


class StateStoreFailed(ServiceUnavailable):
    """The state store answered, with an error (a script that failed on a corrupted value,
    say): what needed it (a key, a budget, a rate limit) cannot be checked, so the request
    is refused like in an outage, but no outage begins. 503 ``state_store_error``."""

    code = "state_store_error"

    def __init__(self, what: str, **kw: Any) -> None:
        super().__init__(f"The gateway's state store failed on this request, so {what} "
                         "cannot be checked; try again shortly.", **kw)
        self.headers.setdefault("retry-after", "1")


def why(e: BaseException) -> str:
    """An error for the log: its class and the first line of its message (a store's own
    text: no request body, no key)."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


class InternalError(SwitchyardError):
    status = 500
    type = "server_error"
    code = "internal_error"


class ConfigError(Exception):
    """Start-up configuration is wrong. ``errors`` holds one ``(path, message)`` per problem."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = errors
        lines = "\n".join(f"  {path}: {msg}" for path, msg in errors)
        super().__init__(f"{len(errors)} configuration error(s):\n{lines}")
