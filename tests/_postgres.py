"""A throw-away PostgreSQL server for integration tests (loopback only, temporary data directory).

:func:`start_server` runs ``initdb`` and ``pg_ctl start`` on a free port of 127.0.0.1 with
``trust`` authentication (the ``pg_hba.conf`` that ``initdb --auth=trust`` writes admits local
sockets and loopback addresses only; the server listens on 127.0.0.1 only), creates one
database and returns a :class:`PostgresServer` whose ``url`` is
``postgresql+psycopg2://postgres@127.0.0.1:PORT/DB``. :meth:`PostgresServer.stop` shuts it down
(``pg_ctl stop -m fast``, then ``-m immediate``) and removes the directory.

PostgreSQL refuses to run as root: when the effective uid is 0 the server commands run as the
``postgres`` system user (``runuser -u postgres --``, else ``su postgres -c``) in a temporary
directory chowned to it. Every command has a timeout. When the server cannot be started,
:class:`PostgresUnavailable` says why (missing binaries, driver, user, or the server's log).
"""

from __future__ import annotations

import glob
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PostgresServer", "PostgresUnavailable", "find_binaries", "start_server"]

SERVER_USER = "postgres"
DATABASE = "hypergrad_test"


class PostgresUnavailable(RuntimeError):
    """The server cannot be started here; the message says why."""


def find_binaries() -> Path:
    """The folder holding ``initdb``, ``pg_ctl`` and ``postgres`` (PATH first, then Debian's layout)."""
    initdb = shutil.which("initdb")
    candidates = [Path(initdb).resolve().parent] if initdb else []
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    for folder in candidates:
        if all((folder / name).is_file() and os.access(folder / name, os.X_OK)
               for name in ("initdb", "pg_ctl", "postgres")):
            return folder
    raise PostgresUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH or under "
        "/usr/lib/postgresql/*/bin; install Debian's 'postgresql' package (.ci/postgres.sh does)"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresServer:
    """A running server: ``url`` (SQLAlchemy), ``port``, ``root`` (temp dir), ``bindir``."""

    url: str
    port: int
    root: Path
    bindir: Path
    as_user: str | None

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return "(no server log)"

    def stop(self, timeout: float = 30.0) -> None:
        """``pg_ctl stop -m fast`` (``-m immediate`` if that fails), then remove the directory."""
        try:
            if (self.data / "postmaster.pid").exists():
                for mode in ("fast", "immediate"):
                    done = _run(self, [str(self.bindir / "pg_ctl"), "stop", "-D", str(self.data), "-m", mode,
                                       "-w", "-t", str(int(timeout))], timeout=timeout + 10, check=False)
                    if done.returncode == 0:
                        break
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def _run(server: PostgresServer, argv: list[str], *, timeout: float, check: bool = True
         ) -> subprocess.CompletedProcess:
    """Run a server command as ``server.as_user`` (when root) with a bounded wall time."""
    if server.as_user is not None:
        if shutil.which("runuser"):
            argv = ["runuser", "-u", server.as_user, "--", *argv]
        else:
            argv = ["su", server.as_user, "-s", "/bin/sh", "-c", shlex.join(argv)]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C", "TZ": "UTC"}
    try:
        done = subprocess.run(argv, cwd=server.root, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise PostgresUnavailable(f"{Path(argv[0]).name} timed out after {timeout:g} s: {shlex.join(argv)}") from exc
    if check and done.returncode != 0:
        raise PostgresUnavailable(
            f"{shlex.join(argv)} exited with {done.returncode}: {(done.stderr or done.stdout).strip()[-1500:]}\n"
            f"server log:\n{server.log_tail()}"
        )
    return done


def start_server(*, database: str = DATABASE, timeout: float = 60.0, attempts: int = 3) -> PostgresServer:
    """Start a private server on 127.0.0.1 and create ``database``; see the module docstring.

    Raises:
        PostgresUnavailable: binaries, the psycopg2 driver or the ``postgres`` user are
            missing, or the server did not start (the message holds its log).
    """
    try:
        import psycopg2
    except ImportError as exc:
        raise PostgresUnavailable(f"the psycopg2 driver is not installed ({exc}); pip install psycopg2-binary") \
            from None
    bindir = find_binaries()
    as_user = None
    if os.geteuid() == 0:
        import pwd

        try:
            entry = pwd.getpwnam(SERVER_USER)
        except KeyError:
            raise PostgresUnavailable(
                f"running as root and there is no {SERVER_USER!r} system user to run the server as "
                "(PostgreSQL refuses to run as root)"
            ) from None
        as_user = SERVER_USER
    root = Path(tempfile.mkdtemp(prefix="hypergrad-pg-"))
    server = PostgresServer(url="", port=0, root=root, bindir=bindir, as_user=as_user)
    try:
        if as_user is not None:
            os.chown(root, entry.pw_uid, entry.pw_gid)
        os.chmod(root, 0o700)
        _run(server, [str(bindir / "initdb"), "-D", str(server.data), "-U", "postgres", "--auth=trust",
                      "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"], timeout=timeout)
        last = ""
        for _ in range(attempts):  # another process may grab the free port before the server binds it
            port = _free_port()
            options = (f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off "
                       "-c synchronous_commit=off -c full_page_writes=off")
            done = _run(server, [str(bindir / "pg_ctl"), "start", "-D", str(server.data), "-l", str(server.log),
                                 "-w", "-t", str(int(timeout)), "-o", options], timeout=timeout + 10, check=False)
            if done.returncode == 0:
                server.port = port
                break
            last = f"pg_ctl start exited with {done.returncode}: {done.stderr.strip()[-500:]}"
        else:
            raise PostgresUnavailable(f"{last}\nserver log:\n{server.log_tail()}")
        deadline = time.monotonic() + timeout
        while True:
            try:
                conn = psycopg2.connect(host="127.0.0.1", port=server.port, user="postgres", dbname="postgres",
                                        connect_timeout=5)
                break
            except psycopg2.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise PostgresUnavailable(f"cannot connect to the server: {exc}\n{server.log_tail()}") from None
                time.sleep(0.2)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{database}"')
        finally:
            conn.close()
        server.url = f"postgresql+psycopg2://postgres@127.0.0.1:{server.port}/{database}"
        return server
    except BaseException:
        server.stop()
        raise
