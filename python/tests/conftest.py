"""Fixtures: real daemons and a real relay from the installed wheel.

A session-wide closed mesh: an authority made with ``proxymesh mesh init``,
a relay serving it, and two member sites A and B on loopback, each with
its own credential from ``proxymesh mesh admit``.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import pytest

import proxymesh
from proxymesh.daemon import wait_until


def _cli(*args: str) -> str:
    out = subprocess.run([proxymesh.binary("proxymesh"), *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def _token(out: str, prefix: str) -> str:
    return next(t for t in out.split() if t.startswith(prefix))


class Mesh:
    def __init__(self, root: Path):
        self.root = root
        self.authority = root / "authority"
        self.id = _token(_cli("mesh", "init", str(self.authority)), "pmm1")
        self.relay = proxymesh.Relay(mesh=self.id).start()
        self._n = 0

    def site(self, *args: str, name: str | None = None) -> proxymesh.Daemon:
        """A member daemon (fresh data directory), started and reserved at the relay."""
        self._n += 1
        data = self.root / (name or f"site{self._n}")
        data.mkdir()
        peer = proxymesh.Daemon.peer_id_of(data)
        cred = _token(_cli("mesh", "admit", "--expires", "1d", str(self.authority), peer), "pmc1")
        d = proxymesh.Daemon(
            data,
            relays=self.relay.addrs,
            credential=cred,
            listen_host="127.0.0.1",
            listen_port=0,
            args=list(args),
        ).start()
        c = d.client()
        wait_until(
            lambda: any(r.get("reserved") for r in c.status()["mesh"]["relays"]),
            60,
            "a relay reservation",
        )
        return d

    def close(self) -> None:
        self.relay.stop()


@pytest.fixture(scope="session")
def mesh():
    with tempfile.TemporaryDirectory(prefix="pm-mesh-") as root:
        m = Mesh(Path(root))
        yield m
        m.close()


@pytest.fixture(scope="session")
def site_a(mesh):
    # Objects over 1 MiB go to disk (the corruption test damages one).
    d = mesh.site("--inline-limit", "1MiB", name="a")
    yield d
    d.stop()


@pytest.fixture(scope="session")
def site_b(mesh):
    d = mesh.site("--connect-timeout", "5", "--idle-timeout", "5", name="b")
    yield d
    d.stop()


@pytest.fixture()
def local():
    """A daemon of its own, in no mesh."""
    with proxymesh.Daemon() as d:
        yield d
