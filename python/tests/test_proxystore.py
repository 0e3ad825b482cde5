"""ProxymeshConnector under ProxyStore's own Store, across two sites of a
closed mesh (real relay, real daemons)."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

proxystore = pytest.importorskip("proxystore")

from proxystore.connectors.protocols import Connector, DeferrableConnector  # noqa: E402
from proxystore.store import Store, get_store, unregister_store  # noqa: E402
from proxystore.store.utils import get_key  # noqa: E402

import proxymesh  # noqa: E402
from proxymesh.proxystore import ProxymeshConnector, ProxymeshKey  # noqa: E402


def _far(site):
    """The environment of a process at ``site``: only its daemon is known."""
    import os

    return {"PROXYMESH_API": site.socket, "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}


@pytest.fixture()
def store_at_a(site_a, monkeypatch):
    # This process is at site A: its daemon is found as any user's would be
    # (the environment), so the store's config names no daemon and a proxy
    # resolves through the daemon of wherever it is resolved.
    monkeypatch.setenv("PROXYMESH_API", site_a.socket)
    store = Store(f"pm-a-{id(site_a)}", ProxymeshConnector(), register=True)
    assert store.connector.config()["api"] is None
    yield store
    unregister_store(store.name)
    store.close()


def test_the_connector_implements_proxystore_protocols(site_a):
    c = ProxymeshConnector(site_a.socket)
    assert isinstance(c, Connector) and isinstance(c, DeferrableConnector)


def test_every_connector_operation(site_a):
    c = ProxymeshConnector(site_a.socket)
    key = c.put(b"payload")
    assert isinstance(key, ProxymeshKey) and key.ticket.startswith("pmo1")
    assert c.get(key) == b"payload" and c.exists(key)
    keys = c.put_batch([b"one", b"two"])
    assert c.get_batch(keys) == [b"one", b"two"]
    c.evict(key)
    assert not c.exists(key) and c.get(key) is None
    c.evict(key)  # already gone: no error
    assert c.get_batch([keys[0], key]) == [b"one", None]
    later = c.new_key()
    assert c.get(later) is None
    c.set(later, b"set later")
    assert c.get(later) == b"set later"
    assert c.get(c.new_key(b"given")) == b"given"
    again = ProxymeshConnector.from_config(c.config())
    assert again.get(keys[1]) == b"two"
    c.close()
    c.close()  # idempotent, and the connector still works after
    assert c.get(keys[1]) == b"two"


def test_config_carries_no_address_unless_given(site_a, monkeypatch):
    assert ProxymeshConnector().config()["api"] is None
    monkeypatch.setenv("PROXYMESH_API", site_a.socket)
    c = ProxymeshConnector.from_config(ProxymeshConnector().config())
    assert c.client.api == site_a.socket


def test_a_proxy_resolves_at_the_far_site(store_at_a, site_b):
    value = {"array": list(range(1000)), "name": "far"}
    proxy = store_at_a.proxy(value)
    blob = pickle.dumps(proxy)
    # Another process, at site B: only B's daemon is known there.
    code = textwrap.dedent(
        """
        import pickle, sys
        p = pickle.loads(sys.stdin.buffer.read())
        print(p["name"], len(p["array"]), sum(p["array"]))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        input=blob,
        capture_output=True,
        timeout=120,
        env=_far(site_b),
    )
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout.decode().split() == ["far", "1000", str(sum(range(1000)))]
    # B fetched it from A through the mesh.
    a_peer = store_at_a.connector.client.status()["peer_id"]
    traffic = site_b.client().status()["mesh"]["traffic"]
    assert any(t["peer_id"] == a_peer and t["fetched_bytes"] > 0 for t in traffic), traffic


def test_an_evicting_proxy_evicts_at_the_producer(store_at_a, site_b, monkeypatch):
    proxy = store_at_a.proxy(b"x" * 1000, evict=True)
    key = get_key(proxy)
    blob = pickle.dumps(proxy)
    out = subprocess.run(
        [sys.executable, "-c", "import pickle,sys; p=pickle.loads(sys.stdin.buffer.read()); print(len(p))"],
        input=blob,
        capture_output=True,
        timeout=120,
        env=_far(site_b),
    )
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout.decode().strip() == "1000"
    assert not store_at_a.connector.exists(key)


def test_store_future_resolves_across_sites(store_at_a, site_b):
    future = store_at_a.future()
    proxy = future.proxy()
    blob = pickle.dumps(proxy)
    resolver = subprocess.Popen(
        [sys.executable, "-c", "import pickle,sys; p=pickle.loads(sys.stdin.buffer.read()); print(p)"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_far(site_b),
    )
    resolver.stdin.write(blob)
    resolver.stdin.close()
    # The far process waits for the value, which is set after it started.
    import time

    time.sleep(1.0)
    assert resolver.poll() is None, resolver.stderr.read().decode()
    future.set_result("the future's value")
    assert resolver.wait(60) == 0, resolver.stderr.read().decode()
    assert resolver.stdout.read().decode().strip() == "the future's value"
    assert future.result() == "the future's value"


def test_errors_map_to_python_exceptions(mesh, site_a, site_b):
    at_a = ProxymeshConnector(site_a.socket)
    at_b = ProxymeshConnector(site_b.socket)
    # Missing: None, from either site.
    key = at_a.put(b"short-lived")
    at_a.evict(key)
    assert at_b.get(key) is None and not at_b.exists(key)
    # Refused: another site's object evicted with a read-only ticket.
    obj = at_a.client.put(b"read only")
    with pytest.raises(proxymesh.Refused):
        at_b.client.evict(obj.ticket)
    assert at_b.get(ProxymeshKey(obj.ticket)) == b"read only"
    # Malformed.
    with pytest.raises(proxymesh.BadRequest):
        at_b.get(ProxymeshKey("pm1notaticket"))
    # Corrupt: a byte flipped on A's disk after A hashed it.
    data = bytes(range(256)) * (8 << 12)  # 8 MiB, on disk at A
    bad = at_a.put(data)
    files = list(Path(site_a.data_dir, "store", "objects").glob("*.data"))
    target = max(files, key=lambda p: p.stat().st_mtime)
    assert target.stat().st_size == len(data)
    raw = bytearray(target.read_bytes())
    raw[5_000_000] ^= 0x40
    target.write_bytes(raw)
    with pytest.raises(proxymesh.Corrupt):
        at_b.get(bad)
    # Unreachable: the producer is gone.
    gone_site = mesh.site(name="gone")
    lost = ProxymeshConnector(gone_site.socket).put(b"on a site that goes away")
    gone_site.stop()
    with pytest.raises((proxymesh.Unreachable, proxymesh.TimedOut)):
        at_b.get(lost)


def test_a_1_gib_object_crosses_the_mesh(site_a, site_b):
    at_a = ProxymeshConnector(site_a.socket)
    at_b = ProxymeshConnector(site_b.socket)
    block = bytes(range(256)) * 4096  # 1 MiB
    data = block * 1024
    key = at_a.put(data)
    got = at_b.get(key)
    assert got is not None and len(got) == len(data)
    assert got == data
    del got
    at_a.evict(key)
    at_b.client.evict(key.ticket)
