"""A native ProxyStore connector: ProxyStore's ``Store`` on proxymesh.

>>> from proxystore.store import Store                      # doctest: +SKIP
>>> from proxymesh.proxystore import ProxymeshConnector
>>> store = Store("mesh", ProxymeshConnector())
>>> proxy = store.proxy(big_array)       # hand it to a task at any site

The connector talks to *this* host's daemon. A key is a ticket naming the
daemon that holds the object, so a proxy resolves at any site of the mesh
through that site's own daemon, with nothing but the proxy: no endpoint
UUID lists, no configuration files (compare ProxyStore's
``EndpointConnector``). ``config()`` carries no address unless one was
given, so ``from_config`` in another process uses that process's daemon.

Keys carry the owner capability (``pmo1...``), because ProxyStore evicts
through the key (``Store.proxy(..., evict=True)``, ``Store.evict``):
whoever holds a proxy may evict its object. Hand out read-only tickets with
:class:`proxymesh.Client` where that matters.

Requires ProxyStore 1.x (``pip install proxymesh[proxystore]``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, NamedTuple

from .client import BytesLike, Client
from .errors import NotFound


class ProxymeshKey(NamedTuple):
    """Key of an object in the mesh: its ticket (with the owner capability)."""

    ticket: str


class ProxymeshConnector:
    """ProxyStore connector for proxymesh (``Connector`` and
    ``DeferrableConnector``, so ``Store.future()`` works).

    ``api``: the local daemon (``unix:PATH``, ``host:port``); by default
    ``$PROXYMESH_API``, else the default data directory's socket, else
    ``127.0.0.1:7878`` — resolved in each process the connector is rebuilt
    in. ``timeout``: seconds for each socket operation (``None``: as long
    as the daemon takes, which has its own timeouts).

    Errors raise :mod:`proxymesh.errors` exceptions (``Unreachable``,
    ``Refused``, ``Corrupt``, ``TimedOut``, ...); a missing object is
    ``None`` from ``get`` as ProxyStore expects.
    """

    def __init__(self, api: str | os.PathLike[str] | None = None, timeout: float | None = 300.0):
        self._api = None if api is None else os.fspath(api)
        self._timeout = timeout
        self._client = Client(api, timeout=timeout)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(api={self._client.api!r})"

    @property
    def client(self) -> Client:
        """The underlying :class:`proxymesh.Client`."""
        return self._client

    def close(self) -> None:
        """Close the connections to the daemon (objects stay)."""
        self._client.close()

    def config(self) -> dict[str, Any]:
        """What ``from_config`` needs: the address only if one was given."""
        return {"api": self._api, "timeout": self._timeout}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "ProxymeshConnector":
        """A connector to this process's local daemon (see :meth:`config`)."""
        return cls(**config)

    def put(self, obj: BytesLike) -> ProxymeshKey:
        """Store ``obj`` at the local daemon."""
        return ProxymeshKey(self._client.put(obj).key)

    def put_batch(self, objs: Sequence[BytesLike]) -> list[ProxymeshKey]:
        """Store several objects in one request."""
        return [ProxymeshKey(o.key) for o in self._client.put_batch(objs)]

    def get(self, key: ProxymeshKey) -> bytearray | None:
        """The object's bytes (fetched through the mesh if another site
        holds it, verified), or ``None`` if it does not exist."""
        try:
            return self._client.get(key.ticket)
        except NotFound:
            return None

    def get_batch(self, keys: Sequence[ProxymeshKey]) -> list[bytes | None]:
        """Several objects in one request; ``None`` for missing ones."""
        return self._client.get_batch([k.ticket for k in keys])

    def exists(self, key: ProxymeshKey) -> bool:
        """Whether the object exists."""
        return self._client.exists(key.ticket)

    def evict(self, key: ProxymeshKey) -> None:
        """Remove the object (no error if it is already gone)."""
        self._client.evict(key.ticket)

    def new_key(self, obj: bytes | None = None) -> ProxymeshKey:
        """A key to :meth:`set` later (``Store.future()``); gets find nothing
        until then. With ``obj``, stores it now."""
        if obj is not None:
            return self.put(obj)
        return ProxymeshKey(self._client.new_key())

    def set(self, key: ProxymeshKey, obj: BytesLike) -> None:
        """Store ``obj`` under ``key`` (from :meth:`new_key`)."""
        self._client.set(key.ticket, obj)


__all__ = ["ProxymeshConnector", "ProxymeshKey"]
