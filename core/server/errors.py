"""The one error type the HTTP layer turns into a JSON error response."""

from __future__ import annotations

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    503: "service_unavailable",
}


class RequestError(Exception):
    """A request failed for a reason the client should see (status + message)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status

    @property
    def type(self) -> str:
        return error_type(self.status)

    def body(self) -> dict:
        return error_body(self.message, self.status)


def error_type(status: int) -> str:
    if status in _TYPES:
        return _TYPES[status]
    return "invalid_request_error" if status < 500 else "internal_server_error"


def error_body(message: str, status: int) -> dict:
    """OpenAI's error shape (SGLang clients read ``error.message`` too)."""
    return {
        "error": {"message": message, "type": error_type(status), "param": None, "code": status}
    }
