"""A client of the local ``proxymeshd``: put, get, exists and evict objects.

The daemon keeps this site's objects and fetches other sites' objects
through the mesh; this client only ever talks to the daemon on its own
host, over the daemon's Unix socket (preferred: gets and exists checks use
its small framed protocol, no HTTP) or its loopback HTTP API.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import struct
import threading
import urllib.parse
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, NamedTuple, Union

from .errors import BadRequest, Corrupt, NotFound, ProxymeshError, TimedOut, Unreachable, from_answer

#: Environment variable naming the local daemon's API (``host:port``,
#: ``http://host:port`` or ``unix:PATH``), as for the Rust SDK and CLI.
API_ENV = "PROXYMESH_API"
#: Where a daemon listens when nothing else is said.
DEFAULT_API = "127.0.0.1:7878"

BytesLike = Union[bytes, bytearray, memoryview]

_HELLO = b"\0PM1"
_QUICK_GET = 1
_QUICK_EXISTS = 2
_QUICK_MAX_KEY = 1024
_BLOCK = 1 << 20


class Object(NamedTuple):
    """What a put stored.

    ``key`` carries the owner capability (``pmo1...``: whoever holds it may
    evict or overwrite the object; keep it); ``ticket`` is the read-only
    ticket (``pm1...``) to give readers. Both resolve anywhere in the mesh.
    """

    key: str
    ticket: str
    size: int
    blake3: str


def default_data_dir() -> Path:
    """The daemon's default data directory (``$XDG_DATA_HOME/proxymesh``)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "proxymesh"


def resolve_api(api: str | os.PathLike[str] | None = None) -> str:
    """The local daemon's address: ``api`` if given, else ``$PROXYMESH_API``,
    else the default data directory's socket if it exists, else
    ``127.0.0.1:7878``. Returned as ``unix:PATH`` or ``host:port``."""
    if api is None:
        api = os.environ.get(API_ENV) or None
    if api is None:
        sock = default_data_dir() / "api.sock"
        return f"unix:{sock}" if sock.exists() else DEFAULT_API
    api = os.fspath(api)
    if api.startswith("unix:"):
        return api
    if api.startswith("http://"):
        return api[len("http://") :].rstrip("/")
    if api.startswith("/"):
        return f"unix:{api}"
    return api


def _ticket(key: object) -> str:
    """A ticket string from a ticket, an :class:`Object` or a key tuple."""
    if isinstance(key, Object):
        return key.key
    if isinstance(key, str):
        t = key.strip()
    elif isinstance(key, tuple) and key and isinstance(key[0], str):
        t = key[0].strip()
    else:
        raise BadRequest(f"not a proxymesh ticket: {key!r}")
    if not t or len(t) > _QUICK_MAX_KEY or not t.isascii() or "/" in t:
        raise BadRequest(f"not a proxymesh ticket: {t[:40]!r}")
    return t


def _object_id(ticket: str) -> str | None:
    """The object ID (hex) a ticket names, without checking the ticket
    (the daemon does): for matching the daemon's transfer records."""
    import base64
    import binascii

    for prefix in ("pmo1", "pm1"):
        if ticket.startswith(prefix):
            body = ticket[len(prefix) :].upper()
            try:
                raw = base64.b32decode(body + "=" * (-len(body) % 8))
            except (binascii.Error, ValueError):
                return None
            return raw[1:17].hex() if len(raw) >= 17 else None
    return ticket if len(ticket) == 32 else None


def _path(ticket: str) -> str:
    return "/v1/objects/" + urllib.parse.quote(ticket, safe="")


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None):
        super().__init__("localhost", timeout=timeout, blocksize=_BLOCK)
        self._socket_path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self._socket_path)
        except OSError:
            s.close()
            raise
        self.sock = s


class Client:
    """A connection to the local proxymesh daemon.

    >>> import proxymesh
    >>> with proxymesh.Daemon() as d:              # doctest: +SKIP
    ...     c = d.client()
    ...     obj = c.put(b"hello")
    ...     assert c.get(obj.ticket) == b"hello"

    ``api`` is ``unix:PATH``, ``host:port`` or ``http://host:port``; by
    default ``$PROXYMESH_API``, else the default data directory's socket,
    else ``127.0.0.1:7878``. ``timeout`` bounds each socket operation (a
    remote get waits for the daemon, which has its own timeouts; ``None``
    waits as long as the daemon does). Safe to share between threads: each
    thread keeps its own connections.
    """

    def __init__(self, api: str | os.PathLike[str] | None = None, timeout: float | None = 300.0):
        self.api = resolve_api(api)
        self.timeout = timeout
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"proxymesh.Client({self.api!r})"

    # -- connections ---------------------------------------------------

    @property
    def _unix(self) -> str | None:
        return self.api[len("unix:") :] if self.api.startswith("unix:") else None

    def _http(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "http", None)
        if conn is None:
            if self._unix is not None:
                conn = _UnixHTTPConnection(self._unix, self.timeout)
            else:
                host, _, port = self.api.rpartition(":")
                if not host or not port.isdigit():
                    raise BadRequest(f"bad daemon address {self.api!r}: expected host:port or unix:PATH")
                conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=self.timeout, blocksize=_BLOCK)
            self._local.http = conn
        return conn

    def _drop_http(self) -> None:
        conn = getattr(self._local, "http", None)
        if conn is not None:
            conn.close()
            self._local.http = None

    def close(self) -> None:
        """Close this thread's connections (they reopen on the next call)."""
        self._drop_http()
        q = getattr(self._local, "quick", None)
        if q is not None:
            q.close()
            self._local.quick = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(
        self,
        method: str,
        path: str,
        body: BytesLike | IO[bytes] | list[bytes | memoryview] | None = None,
        headers: dict[str, str] | None = None,
        *,
        length: int | None = None,
    ) -> http.client.HTTPResponse:
        """Send a request and return the response with its head read. A
        kept-alive connection the daemon closed meanwhile is replaced once
        (the body is sent again: bytes, or a file rewound)."""
        headers = dict(headers or {})
        if body is not None:
            if isinstance(body, memoryview):
                body = body.cast("B") if body.ndim == 1 and body.format != "B" else body
                length = body.nbytes
            elif isinstance(body, (bytes, bytearray)):
                length = len(body)
            if length is not None:
                headers["Content-Length"] = str(length)
            else:
                headers["Transfer-Encoding"] = "chunked"
        start = body.tell() if hasattr(body, "tell") and hasattr(body, "seek") else None
        for attempt in (0, 1):
            conn = self._http()
            reused = conn.sock is not None
            try:
                conn.request(method, path, body=body, headers=headers, encode_chunked=length is None and body is not None)
                return conn.getresponse()
            except (OSError, EOFError, http.client.HTTPException) as e:
                self._drop_http()
                replayable = body is None or isinstance(body, (bytes, bytearray, memoryview, list)) or start is not None
                if attempt == 0 and reused and _stale(e) and replayable:
                    if start is not None:
                        body.seek(start)  # type: ignore[union-attr]
                    continue
                raise self._failure(e) from e
        raise AssertionError("unreachable")

    def _failure(self, e: BaseException) -> ProxymeshError:
        """What a failure to talk to the daemon means, as an exception."""
        if isinstance(e, socket.timeout):
            return TimedOut(f"the daemon at {self.api} did not answer within {self.timeout} s")
        if isinstance(e, (FileNotFoundError, ConnectionRefusedError)):
            return Unreachable(f"no proxymesh daemon at {self.api} ({getattr(e, 'strerror', None) or e}); is proxymeshd running?")
        if _stale(e):
            return Unreachable(f"the daemon at {self.api} closed the connection: {e}")
        return Unreachable(f"cannot talk to the daemon at {self.api}: {e}")

    def _json(self, method: str, path: str, body: BytesLike | IO[bytes] | None = None, **kw: object) -> dict:
        resp = self._request(method, path, body, **kw)  # type: ignore[arg-type]
        data = resp.read()
        if resp.status >= 400:
            raise from_answer(resp.status, data)
        try:
            return json.loads(data)
        except ValueError as e:
            raise ProxymeshError(f"the daemon answered {resp.status} with a body that is not JSON") from e

    # -- the quick protocol (Unix socket) ------------------------------

    def _quick(self, op: int, ticket: str) -> tuple[int, int, socket.socket]:
        """Send one quick request; the status, length and the socket to read
        the answer's body from. A connection the daemon closed while idle
        is replaced once."""
        request = struct.pack(">BH", op, len(ticket)) + ticket.encode("ascii")
        for attempt in (0, 1):
            s = getattr(self._local, "quick", None)
            reused = s is not None
            try:
                if s is None:
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    s.settimeout(self.timeout)
                    s.connect(self._unix)  # type: ignore[arg-type]
                    s.sendall(_HELLO)
                    self._local.quick = s
                s.sendall(request)
                head = _recv_exact(s, 10)
                status, length = struct.unpack(">HQ", head)
                return status, length, s
            except (OSError, EOFError) as e:
                self._drop_quick()
                if attempt == 0 and reused and _stale(e):
                    continue
                raise self._failure(e) from e
        raise AssertionError("unreachable")

    def _drop_quick(self) -> None:
        s = getattr(self._local, "quick", None)
        if s is not None:
            s.close()
            self._local.quick = None

    # -- objects -------------------------------------------------------

    def put(self, data: BytesLike | IO[bytes]) -> Object:
        """Store ``data`` (bytes, a buffer, or a binary file object read to
        its end) at the local daemon. Returns its keys, size and hash."""
        length = None
        if hasattr(data, "read"):
            length = _remaining(data)  # type: ignore[arg-type]
        return _object(self._json("POST", "/v1/objects", data, length=length))

    def put_file(self, path: str | os.PathLike[str]) -> Object:
        """Store the file at ``path`` (streamed; never all in memory)."""
        with open(path, "rb") as f:
            return self.put(f)

    def put_batch(self, items: Iterable[BytesLike]) -> list[Object]:
        """Store several objects in one request; their :class:`Object` s, in order."""
        # Sent frame by frame from the callers' buffers: no joined copy.
        frames: list[bytes | memoryview] = []
        sizes: list[int] = []
        for item in items:
            view = memoryview(item).cast("B")
            frames.append(struct.pack(">Q", view.nbytes))
            frames.append(view)
            sizes.append(view.nbytes)
        length = sum(len(f) if isinstance(f, bytes) else f.nbytes for f in frames)
        answer = self._json("POST", "/v1/batch/put", frames, length=length)
        keys, tickets = answer["keys"], answer.get("tickets") or answer["keys"]
        # The batch answer carries no hashes; sizes are what was sent.
        return [Object(k, t, n, "") for k, t, n in zip(keys, tickets, sizes)]

    def new_key(self) -> str:
        """A fresh key (with the owner capability) at the local daemon,
        nothing stored under it yet: :meth:`set` it later; gets of it find
        nothing until then."""
        return self._json("POST", "/v1/keys")["key"]

    def set(self, key: str | Object, data: BytesLike | IO[bytes]) -> Object:
        """Store ``data`` under ``key`` (from :meth:`new_key`, or a key
        with the owner capability: replaces its object)."""
        length = _remaining(data) if hasattr(data, "read") else None  # type: ignore[arg-type]
        return _object(self._json("PUT", _path(_ticket(key)), data, length=length))

    def get(self, ticket: str | Object) -> bytearray:
        """The object's bytes, from this site or fetched from the site that
        holds it (verified against its hash). Raises :class:`NotFound` if
        there is no such object. The bytes land in the returned buffer
        straight from the socket."""
        t = _ticket(ticket)
        if self._unix is not None:
            status, length, s = self._quick(_QUICK_GET, t)
            if status != 200:
                body = _recv_exact(s, min(length, 64 * 1024))
                if status >= 500 or length > 64 * 1024:
                    self._drop_quick()
                raise from_answer(status, bytes(body))
            try:
                return _recv_exact(s, length)
            except (OSError, EOFError) as e:
                self._drop_quick()
                raise self._cut_short(t, str(e)) from e
        resp = self._request("GET", _path(t))
        if resp.status != 200:
            raise from_answer(resp.status, resp.read())
        try:
            return _read_response(resp)
        except Unreachable as e:
            self._drop_http()
            raise self._cut_short(t, str(e)) from e

    def _cut_short(self, ticket: str, detail: str) -> ProxymeshError:
        """Why an object's bytes stopped midway (the answer had begun, so
        it could not say): the daemon's record of the transfer from the
        site holding it, if it has one — e.g. :class:`Corrupt` when a chunk
        group did not match the object's hash (nothing of it was handed
        out) — else :class:`Unreachable`."""
        oid = _object_id(ticket)
        try:
            transfers = self.status().get("mesh", {}).get("recent_transfers", [])
        except ProxymeshError:
            transfers = []
        for t in reversed(transfers):
            state = str(t.get("state", ""))
            if oid and t.get("object") == oid and state.startswith("failed"):
                cls = Corrupt if "corrupt" in state else TimedOut if "timed out" in state else Unreachable
                return cls(f"object {oid} ended short ({detail}): {state}")
        return Unreachable(f"the object {ticket[:24]}... ended short: {detail}")

    def get_file(self, ticket: str | Object, path: str | os.PathLike[str]) -> int:
        """Write the object to ``path`` (streamed); the bytes written.
        Nothing is left at ``path`` if the get fails."""
        resp = self._request("GET", _path(_ticket(ticket)))
        if resp.status != 200:
            raise from_answer(resp.status, resp.read())
        tmp = Path(f"{os.fspath(path)}.part")
        n = 0
        try:
            with open(tmp, "wb") as f:
                buf = bytearray(_BLOCK)
                view = memoryview(buf)
                while True:
                    k = resp.readinto(buf)
                    if not k:
                        break
                    f.write(view[:k])
                    n += k
            expect = resp.getheader("content-length")
            if expect is not None and int(expect) != n:
                raise Unreachable(f"the object ended after {n} of {expect} bytes")
            os.replace(tmp, path)
        except BaseException:
            self._drop_http()
            tmp.unlink(missing_ok=True)
            raise
        return n

    def get_batch(self, tickets: Sequence[str | Object]) -> list[bytes | None]:
        """Several objects in one request, in order; ``None`` for missing ones."""
        keys = [_ticket(t) for t in tickets]
        resp = self._request(
            "POST",
            "/v1/batch/get",
            json.dumps({"keys": keys}).encode(),
            {"Content-Type": "application/json"},
        )
        if resp.status != 200:
            raise from_answer(resp.status, resp.read())
        out: list[bytes | None] = []
        for _ in keys:
            flag = resp.read(1)
            if flag == b"\0":
                out.append(None)
            elif flag == b"\1":
                (n,) = struct.unpack(">Q", _read_exact(resp, 8))
                out.append(_read_exact(resp, n))
            else:
                self._drop_http()
                raise ProxymeshError("the daemon's batch answer ended early or is malformed")
        resp.read()
        return out

    def exists(self, ticket: str | Object) -> bool:
        """Whether the object exists (asking the site that holds it)."""
        t = _ticket(ticket)
        if self._unix is not None:
            status, length, s = self._quick(_QUICK_EXISTS, t)
            body = _recv_exact(s, length) if length else b""
            if status == 200:
                return True
            if status == 404:
                return False
            raise from_answer(status, bytes(body))
        resp = self._request("HEAD", _path(t))
        resp.read()
        if resp.status == 200:
            return True
        if resp.status == 404:
            return False
        raise from_answer(resp.status, b"")

    def evict(self, key: str | Object) -> bool:
        """Remove the object (the key must carry the owner capability for
        another daemon's object); whether it existed."""
        return bool(self._json("DELETE", _path(_ticket(key))).get("evicted"))

    def status(self) -> dict:
        """The daemon's status (peer ID, objects, mesh, transfers), as JSON."""
        return self._json("GET", "/v1/status")


def _object(answer: dict) -> Object:
    key = answer["key"]
    return Object(key, answer.get("ticket") or key, int(answer.get("size", -1)), answer.get("blake3", ""))


def _remaining(f: IO[bytes]) -> int | None:
    """Bytes left in a file object, if it can tell (a regular file)."""
    try:
        size = os.fstat(f.fileno()).st_size
        return max(size - f.tell(), 0)
    except (AttributeError, OSError, ValueError):
        return None


def _stale(e: BaseException) -> bool:
    """Whether a kept-alive connection was closed under us (worth one retry
    on a new connection), rather than no daemon being there."""
    if isinstance(e, ConnectionRefusedError):
        return False
    return isinstance(e, (ConnectionError, EOFError, http.client.RemoteDisconnected, http.client.BadStatusLine))


def _recv_exact(s: socket.socket, n: int) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = s.recv_into(view[got:], min(n - got, 4 << 20))
        if k == 0:
            raise EOFError(f"connection closed after {got} of {n} bytes")
        got += k
    return buf


def _read_exact(resp: http.client.HTTPResponse, n: int) -> bytes:
    data = resp.read(n)
    if len(data) != n:
        raise ProxymeshError(f"the daemon's answer ended after {len(data)} of {n} bytes")
    return data


def _read_response(resp: http.client.HTTPResponse) -> bytearray:
    length = resp.getheader("content-length")
    if length is None:
        return bytearray(resp.read())
    n = int(length)
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = resp.readinto(view[got:])
        if not k:
            raise Unreachable(f"the object ended after {got} of {n} bytes")
        got += k
    return buf


__all__ = ["API_ENV", "Client", "DEFAULT_API", "NotFound", "Object", "resolve_api"]
