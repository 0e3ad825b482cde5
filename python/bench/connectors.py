"""Get from Python through three ProxyStore connectors, same run:

- ``ProxymeshConnector`` (this package) at the producer's site (local) and
  at another site of the mesh (remote: fetched through the mesh, verified);
- ProxyStore's ``EndpointConnector`` against ``proxymeshd`` (the daemon
  speaks ProxyStore's endpoint REST API);
- ProxyStore's ``RedisConnector`` against a local ``redis-server``.

Run with the wheel installed (``pip install proxymesh[proxystore] redis``)
and ``redis-server`` on PATH::

    python python/bench/connectors.py [--rounds 5] [--big-mib 1024]

1 KB: median of many gets of one object (remote: of fresh objects, so
each is a real fetch, not B's cache). Large: median of ``--rounds`` gets
(remote: a fresh object each round).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import proxymesh
from proxymesh.proxystore import ProxymeshConnector


def _cli(*args: str) -> str:
    out = subprocess.run([proxymesh.binary("proxymesh"), *args], capture_output=True, text=True, check=True)
    return out.stdout


def _token(out: str, prefix: str) -> str:
    return next(t for t in out.split() if t.startswith(prefix))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(fn, n: int) -> float:
    """Median seconds of ``n`` calls of ``fn(i)``."""
    samples = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="gets of the large object per connector")
    ap.add_argument("--small", type=int, default=500, help="gets of the 1 KB object per connector")
    ap.add_argument("--big-mib", type=int, default=1024, help="size of the large object, MiB")
    args = ap.parse_args()

    from proxystore.connectors.endpoint import EndpointConnector
    from proxystore.connectors.redis import RedisConnector

    small = os.urandom(1000)
    big = os.urandom(1 << 20) * args.big_mib
    size_label = f"{args.big_mib} MiB" if args.big_mib < 1024 else f"{args.big_mib // 1024} GiB"
    rows: list[tuple[str, float, float]] = []

    with tempfile.TemporaryDirectory(prefix="pm-bench-") as root:
        root_p = Path(root)
        authority = root_p / "authority"
        mesh_id = _token(_cli("mesh", "init", str(authority)), "pmm1")
        home = root_p / "proxystore-home"
        home.mkdir()
        os.environ["PROXYSTORE_HOME"] = str(home)
        with proxymesh.Relay(mesh=mesh_id) as relay:
            sites = []
            for name in ("a", "b"):
                data = root_p / name
                data.mkdir()
                cred = _token(_cli("mesh", "admit", "--expires", "1d", str(authority), proxymesh.Daemon.peer_id_of(data)), "pmc1")
                extra = ["--proxystore-name", "pm-bench"] if name == "a" else []
                sites.append(
                    proxymesh.Daemon(data, relays=relay.addrs, credential=cred, listen_host="127.0.0.1", listen_port=0, args=extra).start()
                )
            a, b = sites
            try:
                for d in sites:
                    c = d.client()
                    proxymesh.daemon.wait_until(lambda c=c: any(r.get("reserved") for r in c.status()["mesh"]["relays"]), 60, "a reservation")
                at_a, at_b = ProxymeshConnector(a.socket), ProxymeshConnector(b.socket)

                # proxymesh, local (the producer's own daemon).
                k = at_a.put(small)
                s_local = timed(lambda i: at_a.get(k), args.small)
                kb = at_a.put(big)
                b_local = timed(lambda i: at_a.get(kb), args.rounds)
                at_a.evict(kb)
                rows.append(("ProxymeshConnector, local", s_local, b_local))

                # proxymesh, remote: B fetches A's objects through the mesh.
                at_b.get(at_a.put(small))  # connect (relay, hole punch) first
                fresh = [at_a.put(small) for _ in range(args.small)]
                s_remote = timed(lambda i: at_b.get(fresh[i]), args.small)
                big_keys = [at_a.put(big) for _ in range(args.rounds)]

                def remote_big(i: int) -> None:
                    got = at_b.get(big_keys[i])
                    assert got is not None and len(got) == len(big)

                b_remote = timed(remote_big, args.rounds)
                for key in big_keys:
                    at_a.evict(key)
                    at_b.client.evict(key.ticket)
                rows.append(("ProxymeshConnector, remote (A -> B)", s_remote, b_remote))

                # EndpointConnector against proxymeshd (A).
                ep = EndpointConnector([a.uuid])
                k = ep.put(small)
                s_ep = timed(lambda i: ep.get(k), args.small)
                kb = ep.put(big)
                b_ep = timed(lambda i: ep.get(kb), args.rounds)
                ep.evict(kb)
                ep.close()
                rows.append(("EndpointConnector -> proxymeshd, local", s_ep, b_ep))
            finally:
                for d in sites:
                    d.stop()

        # Redis.
        redis = shutil.which("redis-server")
        if redis is None:
            print("redis-server not found: RedisConnector skipped", file=sys.stderr)
        else:
            port = _free_port()
            server = subprocess.Popen(
                [redis, "--port", str(port), "--save", "", "--appendonly", "no", "--proto-max-bulk-len", "2gb", "--client-query-buffer-limit", "2gb", "--dir", root],
                stdout=subprocess.DEVNULL,
            )
            try:
                rc = RedisConnector("127.0.0.1", port)
                for _ in range(100):
                    try:
                        rc.exists(rc.put(b"x"))
                        break
                    except Exception:
                        time.sleep(0.05)
                k = rc.put(small)
                s_redis = timed(lambda i: rc.get(k), args.small)
                kb = rc.put(big)
                b_redis = timed(lambda i: rc.get(kb), args.rounds)
                rows.append(("RedisConnector -> redis-server, local", s_redis, b_redis))
                rc.close()
            finally:
                server.terminate()
                server.wait()

    mib = len(big) / (1 << 20)
    print(f"{'connector':<42} {'1 KB get (median)':>18} {size_label + ' get (median)':>22}")
    for name, s, bsec in rows:
        print(f"{name:<42} {s * 1e6:>15.0f} µs {bsec:>9.2f} s {mib / bsec:>7.0f} MiB/s")


if __name__ == "__main__":
    main()
