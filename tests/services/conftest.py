"""Real services on loopback, started and stopped by the tests: a PostgreSQL server, an MLflow
tracking server, a one-node SLURM cluster (``tests/services/slurm.py``).

Each is started only by the tests that use it. Where this machine lacks a service's programs the
test is skipped with the reason in pytest's summary; ``.ci/run`` sets ``STAGETUNE_SERVICES=required``
so that in CI a missing service fails instead.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.services.slurm import SlurmCluster

PG_BIN = Path("/usr/lib/postgresql")
SERVER_USER = "postgres"  # PostgreSQL refuses to run as root; Debian's package creates this user


def unavailable(reason: str) -> None:
    """Skip with ``reason``, or fail where services are required (CI)."""
    if os.environ.get("STAGETUNE_SERVICES") == "required":
        pytest.fail(f"service required but unavailable: {reason}")
    pytest.skip(reason, allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 60, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before listening on port {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def as_user(user: str, *cmd: str) -> list[str]:
    """``cmd`` as ``user`` when this process is root (servers that refuse root), else as is."""
    return ["runuser", "-u", user, "--", *cmd] if os.geteuid() == 0 else list(cmd)


@dataclass(frozen=True)
class Postgres:
    """A running PostgreSQL server on 127.0.0.1 with a password-protected role that may create databases."""

    port: int
    user: str
    password: str

    def url(self, database: str, password: str | None = None) -> str:
        return f"postgresql://{self.user}:{password or self.password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _pg_bindir() -> Path:
    versions = sorted(PG_BIN.glob("*/bin/pg_ctl")) if PG_BIN.exists() else []
    if not versions:
        found = shutil.which("pg_ctl")
        if found is None:
            unavailable("PostgreSQL is not installed (no pg_ctl; Debian: apt-get install postgresql)")
        return Path(found).parent
    return versions[-1].parent


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A throwaway cluster: ``initdb`` into a temp dir, ``pg_ctl start`` on a free loopback port, stopped after."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        unavailable("the PostgreSQL driver is not installed: pip install 'stagetune[postgres]'")
    bindir = _pg_bindir()
    root = Path(tempfile.mkdtemp(prefix="stagetune-pg-"))
    data, pwfile = root / "data", root / "pw"
    password = secrets.token_hex(8)
    pwfile.write_text(password + "\n")
    if os.geteuid() == 0:
        shutil.chown(root, SERVER_USER)
        shutil.chown(pwfile, SERVER_USER)
    port = free_port()
    run = lambda *cmd: subprocess.run(as_user(SERVER_USER, *cmd), capture_output=True, text=True, check=False)  # noqa: E731
    made = run(str(bindir / "initdb"), "-D", str(data), "-U", "stagetune", f"--pwfile={pwfile}", "--auth=scram-sha-256", "-E", "UTF8")
    if made.returncode != 0:
        raise RuntimeError(f"initdb failed: {made.stdout}{made.stderr}")
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off"
    started = run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-o", options, "-w", "start")
    if started.returncode != 0:
        raise RuntimeError(f"pg_ctl start failed: {started.stdout}{started.stderr}{(root / 'server.log').read_text()}")
    try:
        yield Postgres(port=port, user="stagetune", password=password)
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def slurm() -> Iterator[SlurmCluster]:
    """A one-node SLURM cluster on loopback (:mod:`tests.services.slurm`), its daemons stopped after."""
    from tests.services.slurm import SlurmCluster, missing

    why = missing()
    if why:
        unavailable(why)
    cluster = SlurmCluster(Path(tempfile.mkdtemp(prefix="stagetune-slurm-"))).start()
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.folder, ignore_errors=True)


@dataclass(frozen=True)
class MlflowServer:
    """A running ``mlflow server`` on 127.0.0.1 (SQLite backend, artifacts served by the server)."""

    url: str


@pytest.fixture(scope="session")
def mlflow_server() -> Iterator[MlflowServer]:
    """``mlflow server`` on a free loopback port, its store in a temp dir, stopped after."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        unavailable("mlflow is not installed: pip install 'stagetune[mlflow]'")
    root = Path(tempfile.mkdtemp(prefix="stagetune-mlflow-"))
    port = free_port()
    log = open(root / "server.log", "w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        try:
            wait_for_port(port, timeout=120, proc=server)
        except RuntimeError as err:
            raise RuntimeError(f"{err}: {(root / 'server.log').read_text()[-3000:]}") from None
        yield MlflowServer(url=f"http://127.0.0.1:{port}")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:  # its workers can outlive a SIGTERM
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
        shutil.rmtree(root, ignore_errors=True)
