"""Exceptions raised by the proxymesh Python package.

Every error the daemon reports carries a machine-readable code (see the
daemon's API docs); each code maps to one exception class here, all
subclasses of :class:`ProxymeshError`.
"""

from __future__ import annotations


class ProxymeshError(Exception):
    """Any failure reported by a proxymesh daemon or in reaching it.

    ``code`` is the daemon's error code (``"not_found"``, ``"unreachable"``,
    ...) or ``None`` for failures on this side (no daemon, broken answer);
    ``status`` the HTTP status, if there was one.
    """

    def __init__(self, message: str, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.code = code
        self.status = status


class NotFound(ProxymeshError, KeyError):
    """The object does not exist (never stored, evicted, or its daemon lost it)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return Exception.__str__(self)


class BadRequest(ProxymeshError, ValueError):
    """The request was malformed: e.g. a ticket that does not parse."""


class Refused(ProxymeshError, PermissionError):
    """Not allowed: another user's daemon, a read ticket used to evict or
    overwrite, or a daemon that is not a member of the producer's mesh.
    Also what the daemon holding the object answers when it refuses a
    request or breaks the protocol (the daemon's ``peer_error``)."""


class Unreachable(ProxymeshError, ConnectionError):
    """The local daemon, or the daemon holding the object, could not be reached."""


class TimedOut(ProxymeshError, TimeoutError):
    """The daemon holding the object did not answer in time."""


class Corrupt(ProxymeshError):
    """The bytes did not match the object's BLAKE3 hash: nothing wrong was
    handed out."""


class TooLarge(ProxymeshError):
    """The object is over the daemon's size limit."""


class StorageFull(ProxymeshError, OSError):
    """The daemon's disk is full; nothing was stored."""


class DaemonError(ProxymeshError):
    """A daemon process could not be started or stopped."""


_BY_CODE: dict[str, type[ProxymeshError]] = {
    "not_found": NotFound,
    "bad_request": BadRequest,
    "incomplete_body": BadRequest,
    "wrong_peer": Refused,
    "forbidden": Refused,
    "unreachable": Unreachable,
    "peer_error": Refused,
    "timed_out": TimedOut,
    "corrupt": Corrupt,
    "too_large": TooLarge,
    "storage_full": StorageFull,
}

_BY_STATUS: dict[int, type[ProxymeshError]] = {
    400: BadRequest,
    403: Refused,
    404: NotFound,
    409: Refused,
    413: TooLarge,
    502: Unreachable,
    504: TimedOut,
    507: StorageFull,
}


def from_answer(status: int, body: bytes) -> ProxymeshError:
    """The exception for an error answer (``status`` and its JSON body)."""
    import json

    code = None
    message = body.decode("utf-8", "replace").strip() or f"HTTP {status}"
    try:
        parsed = json.loads(body)
        if isinstance(parsed, dict):
            code = parsed.get("code")
            message = parsed.get("error") or message
    except ValueError:
        pass
    cls = _BY_CODE.get(code or "") or _BY_STATUS.get(status) or ProxymeshError
    return cls(message, code=code, status=status)
