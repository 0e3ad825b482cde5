"""proxymesh for Python: move large objects between sites through a mesh of
per-site daemons, by ticket.

- :class:`Client` talks to this host's ``proxymeshd``: ``put`` returns an
  :class:`Object` whose ``ticket`` any site of the mesh can ``get``.
- :class:`Daemon` and :class:`Relay` start the bundled ``proxymeshd`` and
  ``proxymesh-relay`` for notebooks, tests and single-node runs.
- :mod:`proxymesh.proxystore` is a native ProxyStore connector
  (``pip install proxymesh[proxystore]``).

>>> import proxymesh
>>> with proxymesh.Daemon() as d:            # doctest: +SKIP
...     c = d.client()
...     obj = c.put(b"hello")
...     c.get(obj.ticket)
bytearray(b'hello')
"""

from importlib.metadata import PackageNotFoundError, version

from .client import API_ENV, Client, Object, resolve_api
from .daemon import Daemon, Relay, binary
from .errors import (
    BadRequest,
    Corrupt,
    DaemonError,
    NotFound,
    ProxymeshError,
    Refused,
    StorageFull,
    TimedOut,
    TooLarge,
    Unreachable,
)

try:
    __version__ = version("proxymesh")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "API_ENV",
    "BadRequest",
    "Client",
    "Corrupt",
    "Daemon",
    "DaemonError",
    "NotFound",
    "Object",
    "ProxymeshError",
    "Refused",
    "Relay",
    "StorageFull",
    "TimedOut",
    "TooLarge",
    "Unreachable",
    "binary",
    "resolve_api",
]
