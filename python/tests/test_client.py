"""proxymesh.Client and proxymesh.Daemon against real daemons."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading

import pytest

import proxymesh


def test_the_wheel_puts_the_binaries_on_path():
    for name in ("proxymeshd", "proxymesh", "proxymesh-relay"):
        path = proxymesh.binary(name)
        assert os.path.dirname(path) == os.path.dirname(sys.executable), path
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0 and out.stdout.strip(), (name, out)


def test_put_get_exists_evict_bytes_buffers_and_files(local, tmp_path):
    c = local.client()
    assert c.api.startswith("unix:")
    obj = c.put(b"hello")
    assert obj.key.startswith("pmo1") and obj.ticket.startswith("pm1") and obj.size == 5
    assert c.get(obj.ticket) == b"hello" and c.get(obj) == b"hello"
    assert c.exists(obj.ticket)
    # Buffers: a memoryview of a non-byte array is sent as its bytes.
    import array

    arr = array.array("d", [1.5, 2.5, 3.5])
    assert c.get(c.put(memoryview(arr)).ticket) == arr.tobytes()
    assert c.get(c.put(bytearray(b"xyz")).ticket) == b"xyz"
    # Files, both ways.
    src = tmp_path / "in.bin"
    src.write_bytes(os.urandom(3 << 20))
    f_obj = c.put_file(src)
    assert f_obj.size == 3 << 20
    dst = tmp_path / "out.bin"
    assert c.get_file(f_obj.ticket, dst) == 3 << 20
    assert dst.read_bytes() == src.read_bytes()
    with open(src, "rb") as f:
        f.seek(1000)
        assert c.get(c.put(f).ticket) == src.read_bytes()[1000:]
    assert c.evict(obj.key) is True
    assert not c.exists(obj.ticket)
    assert c.evict(obj.key) is False
    with pytest.raises(proxymesh.NotFound):
        c.get(obj.ticket)
    with pytest.raises(proxymesh.NotFound):
        c.get_file(obj.ticket, tmp_path / "missing")
    assert not (tmp_path / "missing").exists() and not (tmp_path / "missing.part").exists()


def test_the_tcp_api_works_like_the_socket(local):
    tcp = proxymesh.Client(local.api)
    assert not tcp.api.startswith("unix:")
    obj = tcp.put(b"over tcp")
    assert local.client().get(obj.ticket) == b"over tcp"
    assert tcp.get(obj.ticket) == b"over tcp" and tcp.exists(obj.ticket)
    assert tcp.get_batch([obj.ticket]) == [b"over tcp"]
    assert tcp.evict(obj.key)
    with pytest.raises(proxymesh.NotFound):
        tcp.get(obj.ticket)


def test_batches_and_deferred_keys(local):
    c = local.client()
    objs = c.put_batch([b"a", b"", b"ccc"])
    assert [o.ticket[:3] for o in objs] == ["pm1"] * 3
    assert [o.size for o in objs] == [1, 0, 3]
    gone = c.put(b"gone")
    c.evict(gone.key)
    assert c.get_batch([objs[0].ticket, gone.ticket, objs[2].key, objs[1]]) == [b"a", None, b"ccc", b""]
    key = c.new_key()
    assert not c.exists(key)
    c.set(key, b"later")
    assert c.get(key) == b"later"


def test_malformed_tickets_are_bad_requests(local):
    c = local.client()
    for bad in ("pm1garbage", "nonsense", "", "a/b"):
        with pytest.raises(proxymesh.BadRequest):
            c.get(bad)
    with pytest.raises(proxymesh.BadRequest):
        c.exists("pm1garbage")
    with pytest.raises(proxymesh.BadRequest):
        c.evict(12)  # type: ignore[arg-type]


def test_no_daemon_is_unreachable(tmp_path):
    with pytest.raises(proxymesh.Unreachable, match="is proxymeshd running"):
        proxymesh.Client(f"unix:{tmp_path}/none.sock").get("pm1x")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(proxymesh.Unreachable):
        proxymesh.Client(f"127.0.0.1:{port}").put(b"x")


def test_a_daemon_that_does_not_answer_times_out(tmp_path):
    path = str(tmp_path / "mute.sock")
    mute = socket.socket(socket.AF_UNIX)
    mute.bind(path)
    mute.listen()
    held = []
    threading.Thread(target=lambda: held.append(mute.accept()), daemon=True).start()
    with pytest.raises(proxymesh.TimedOut):
        proxymesh.Client(f"unix:{path}", timeout=0.5).get("pm1x")
    mute.close()


def test_the_daemon_context_manager_stops_it_and_removes_its_directory():
    with proxymesh.Daemon() as d:
        assert d.running and d.peer_id and d.uuid
        data = d.data_dir
        assert d.client().status()["peer_id"] == d.peer_id
    assert not d.running
    assert not data.exists()
    with pytest.raises(proxymesh.DaemonError):
        d.client()


def test_a_daemon_that_cannot_start_says_why(tmp_path):
    with pytest.raises(proxymesh.DaemonError, match="credential"):
        proxymesh.Daemon(tmp_path / "d", relays=["/ip4/127.0.0.1/udp/9/quic-v1/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"], startup_timeout=30).start()


def test_env_selects_the_daemon(local, monkeypatch):
    monkeypatch.setenv("PROXYMESH_API", local.socket)
    obj = proxymesh.Client().put(b"via env")
    assert local.client().get(obj.ticket) == b"via env"
