"""Start and stop ``proxymeshd`` and ``proxymesh-relay`` from Python: for
notebooks, tests and single-node runs.

The binaries come with the wheel (on the virtualenv's ``PATH``); set
``PROXYMESH_BIN_DIR`` to use others.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from .client import Client
from .errors import DaemonError


def binary(name: str) -> str:
    """The path of the bundled binary ``name`` (``proxymeshd``,
    ``proxymesh`` or ``proxymesh-relay``): ``$PROXYMESH_BIN_DIR`` first,
    then this environment's scripts directory, then ``PATH``."""
    candidates = []
    if os.environ.get("PROXYMESH_BIN_DIR"):
        candidates.append(Path(os.environ["PROXYMESH_BIN_DIR"]) / name)
    candidates.append(Path(sysconfig.get_path("scripts")) / name)
    candidates.append(Path(sys.executable).parent / name)
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    found = shutil.which(name)
    if found:
        return found
    raise DaemonError(f"{name} not found (looked in {', '.join(map(str, candidates))} and PATH); install the proxymesh wheel or set PROXYMESH_BIN_DIR")


class _Process:
    """A child process that prints a banner on stdout, then runs until stopped."""

    _proc: subprocess.Popen[str] | None = None
    _log_path: Path

    def _spawn(self, argv: list[str], env: dict[str, str], ready, timeout: float) -> list[str]:
        log = tempfile.NamedTemporaryFile(prefix=f"{Path(argv[0]).name}-", suffix=".log", delete=False)
        self._log_path = Path(log.name)
        self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, env=env, text=True, start_new_session=True)
        log.close()
        # Not left behind when the interpreter exits without stopping it.
        atexit.register(self.stop)
        lines: list[str] = []
        done = threading.Event()

        def read() -> None:
            assert self._proc is not None and self._proc.stdout is not None
            for line in self._proc.stdout:
                lines.append(line.rstrip("\n"))
                if ready(lines):
                    done.set()
            done.set()

        threading.Thread(target=read, daemon=True).start()
        if not done.wait(timeout) or not ready(lines):
            self._kill()
            raise DaemonError(f"{argv[0]} did not start within {timeout} s (exit {self._proc.returncode}); output: {lines}; log:\n{self.log()}")
        return lines

    def log(self) -> str:
        """The last 4 KiB of the process's log (its stderr)."""
        try:
            data = self._log_path.read_bytes()
        except OSError:
            return ""
        return data[-4096:].decode("utf-8", "replace")

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    @property
    def running(self) -> bool:
        """Whether the process is still running."""
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """Stop it (SIGTERM, then SIGKILL after ``timeout`` s); its exit code."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        return self._proc.returncode


class Daemon(_Process):
    """A ``proxymeshd`` child process, stopped when the ``with`` block ends.

    >>> with proxymesh.Daemon() as d:          # doctest: +SKIP
    ...     ticket = d.client().put(b"data").ticket

    Without ``relays`` it serves this host only. To join a mesh give the
    relay addresses and this daemon's ``credential`` (``pmc1...`` or a file
    holding it, from ``proxymesh mesh admit``; see :meth:`peer_id` for what
    to admit), or ``open_mesh=True`` for labs. ``data_dir`` defaults to a
    temporary directory removed afterwards (its identity with it: pass a
    directory to keep the peer ID a credential names). ``args`` are more
    ``proxymeshd`` flags. The daemon listens on loopback only.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        relays: Sequence[str] = (),
        credential: str | None = None,
        open_mesh: bool = False,
        listen_host: str | None = None,
        listen_port: int | None = None,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        startup_timeout: float = 60.0,
    ):
        self._tmp = None if data_dir is not None else tempfile.TemporaryDirectory(prefix="proxymeshd-")
        self.data_dir = Path(data_dir if data_dir is not None else self._tmp.name)  # type: ignore[union-attr]
        self.relays = list(relays)
        self.credential = credential
        self.open_mesh = open_mesh
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.args = list(args)
        self.env = env
        self.startup_timeout = startup_timeout
        self.peer_id: str | None = None
        self.uuid: str | None = None
        self.api: str | None = None
        self.socket: str | None = None

    @staticmethod
    def peer_id_of(data_dir: str | os.PathLike[str]) -> str:
        """The peer ID of the daemon whose data directory is ``data_dir``
        (its identity is created there if needed): what ``proxymesh mesh
        admit`` signs a credential for."""
        out = subprocess.run([binary("proxymeshd"), "--print-peer-id", "--data-dir", os.fspath(data_dir)], capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise DaemonError(f"proxymeshd --print-peer-id failed: {out.stderr.strip()}")
        return out.stdout.strip()

    def start(self) -> "Daemon":
        """Start it and wait until it serves; returns ``self``."""
        argv = [binary("proxymeshd"), "--data-dir", str(self.data_dir), "--api", "127.0.0.1:0"]
        for r in self.relays:
            argv += ["--relay", r]
        if self.credential:
            argv += ["--credential", self.credential]
        if self.open_mesh:
            argv.append("--open-mesh")
        if self.listen_host:
            argv += ["--listen-host", self.listen_host]
        if self.listen_port is not None:
            argv += ["--listen-port", str(self.listen_port)]
        argv += self.args
        env = dict(os.environ if self.env is None else self.env)
        env.pop("PROXYMESH_API", None)
        env.setdefault("PROXYMESHD_LOG", "warn")
        banner = self._spawn(argv, env, lambda lines: bool(lines) and lines[-1] == "ready", self.startup_timeout)
        fields = {}
        for line in banner:
            name, _, value = line.partition(":")
            fields.setdefault(name.strip(), value.strip())
        self.peer_id = fields.get("peer id")
        self.uuid = fields.get("endpoint")
        self.api = fields.get("api", "").removeprefix("http://") or None
        self.socket = fields.get("socket") or None
        return self

    def client(self, **kw: object) -> Client:
        """A :class:`Client` of this daemon (its Unix socket)."""
        if not self.running:
            raise DaemonError("the daemon is not running")
        return Client(self.socket or self.api, **kw)  # type: ignore[arg-type]

    def __enter__(self) -> "Daemon":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()


class Relay(_Process):
    """A ``proxymesh-relay`` child process, stopped when the ``with`` block ends.

    ``mesh`` is the mesh ID it serves (``proxymesh mesh init`` prints it);
    ``open_mesh=True`` serves anyone (labs). ``addrs`` are its dialable
    addresses once started (give them to daemons as ``relays``).
    """

    def __init__(
        self,
        *,
        mesh: str | None = None,
        open_mesh: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
        identity: str | os.PathLike[str] | None = None,
        revocations: str | os.PathLike[str] | None = None,
        args: Sequence[str] = (),
        startup_timeout: float = 60.0,
    ):
        if (mesh is None) == (not open_mesh):
            raise ValueError("give the relay a mesh ID, or open_mesh=True")
        self._tmp = tempfile.TemporaryDirectory(prefix="proxymesh-relay-")
        self.mesh, self.open_mesh = mesh, open_mesh
        self.host, self.port = host, port
        self.identity = Path(identity) if identity else Path(self._tmp.name) / "relay.key"
        self.revocations = revocations
        self.args = list(args)
        self.startup_timeout = startup_timeout
        self.addrs: list[str] = []

    def start(self) -> "Relay":
        """Start it and wait for its addresses; returns ``self``."""
        port = self.port or _free_port(self.host)
        argv = [binary("proxymesh-relay"), "--host", self.host, "--port", str(port), "--identity", str(self.identity)]
        argv += ["--open-mesh"] if self.open_mesh else ["--mesh", str(self.mesh)]
        if self.revocations:
            argv += ["--revocations", os.fspath(self.revocations)]
        argv += self.args
        env = dict(os.environ)
        env.setdefault("PROXYMESH_RELAY_LOG", "warn")

        def ready(lines: list[str]) -> bool:
            return any("/quic-v1/" in x for x in lines) and any("/tcp/" in x for x in lines)

        lines = self._spawn(argv, env, ready, self.startup_timeout)
        self.port = port
        self.addrs = [x.strip() for x in lines if x.strip().startswith("/")]
        return self

    def __enter__(self) -> "Relay":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._tmp.cleanup()


def _free_port(host: str) -> int:
    """A port free for both TCP and UDP on ``host`` right now."""
    import socket

    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind((host, 0))
            port = t.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind((host, port))
                except OSError:
                    continue
            return port
    raise DaemonError("no free port")


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll ``predicate`` until it is true; :class:`DaemonError` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise DaemonError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
