"""A one-node SLURM cluster on loopback, for the tests: munge, slurmctld and slurmd in one folder.

``SlurmCluster(folder).start()`` writes a munge key and a minimal ``slurm.conf`` (this machine's
real CPU count and memory from ``slurmd -C``; processes tracked by ``proctrack/linuxproc``, no
cgroups, no accounting database; a requeued job may start again 10 s after, not SLURM's default
120 s: ``cred_expire``), starts the three daemons, waits until the node is idle, and
``stop()`` ends them. Clients find the cluster through ``SLURM_CONF`` (:meth:`env`). The daemons
must run as root (slurmd starts jobs as the submitting user); munged runs as its own user.

Also a script, for trying the cluster by hand: ``python -m tests.services.slurm DIR`` starts one
and keeps it up until Ctrl-C.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
MUNGE_USER = "munge"


def missing() -> str | None:
    """Why a cluster cannot start here (a program or root is missing), or None."""
    absent = [p for p in (*DAEMONS, "mungekey", "sbatch", "scontrol") if shutil.which(p) is None and not Path("/usr/sbin", p).exists()]
    if absent:
        return f"SLURM is not installed ({', '.join(absent)} missing; Debian: apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "slurmd must run as root to start jobs; run the SLURM tests as root (CI does)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _program(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


class SlurmCluster:
    """One controller and one compute node (this machine) on 127.0.0.1."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.conf = self.folder / "slurm.conf"
        self.socket = self.folder / "munge" / "munge.socket"
        self.node = socket.gethostname().split(".")[0]
        self.procs: list[subprocess.Popen] = []

    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def _write_conf(self) -> None:
        hardware = subprocess.run([_program("slurmd"), "-C"], capture_output=True, text=True, check=True).stdout
        node_line = next(line for line in hardware.splitlines() if line.startswith("NodeName="))
        node_line = re.sub(r"^NodeName=\S+", f"NodeName={self.node} NodeAddr=127.0.0.1", node_line)
        d = self.folder
        for sub in ("state", "spool"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(
            f"""ClusterName=stagetune
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.socket},cred_expire=10
StateSaveLocation={d / "state"}
SlurmdSpoolDir={d / "spool"}
SlurmctldPidFile={d / "slurmctld.pid"}
SlurmdPidFile={d / "slurmd.pid"}
SlurmctldLogFile={d / "slurmctld.log"}
SlurmdLogFile={d / "slurmd.log"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
KillWait=10
InactiveLimit=0
MinJobAge=3600
{node_line.strip()} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
        )

    def _start_munge(self) -> None:
        munge = self.socket.parent
        munge.mkdir(parents=True, exist_ok=True)
        key = munge / "munge.key"
        subprocess.run([_program("mungekey"), "--create", f"--keyfile={key}", "--force"], check=True, capture_output=True)
        for path in (munge, key):
            shutil.chown(path, MUNGE_USER, MUNGE_USER)
        key.chmod(0o400)
        munge.chmod(0o755)
        cmd = [
            _program("munged"),
            "--foreground",
            f"--key-file={key}",
            f"--socket={self.socket}",
            f"--pid-file={munge / 'munged.pid'}",
            f"--log-file={munge / 'munged.log'}",
            f"--seed-file={munge / 'munged.seed'}",
        ]
        self.procs.append(subprocess.Popen(["runuser", "-u", MUNGE_USER, "--", *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        self._wait(lambda: self.socket.exists(), "munged's socket", munge / "munged.log")

    def start(self, timeout: float = 60) -> SlurmCluster:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.folder.chmod(0o755)  # munged (its own user) reaches its socket folder through here
        self._write_conf()
        self._start_munge()
        env = self.env()
        for daemon in ("slurmctld", "slurmd"):
            out = open(self.folder / f"{daemon}.out", "w")
            self.procs.append(subprocess.Popen([_program(daemon), "-D", "-f", str(self.conf)], env=env, stdout=out, stderr=subprocess.STDOUT))
        self._wait(lambda: self.node_state() in ("idle", "mixed", "allocated"), "the node to be idle", self.folder / "slurmd.log", timeout)
        return self

    def node_state(self) -> str:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, env=self.env())
        return out.stdout.strip().rstrip("*~#") if out.returncode == 0 else ""

    def _wait(self, ready, what: str, log: Path, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            dead = [p.args for p in self.procs if p.poll() is not None]
            if dead:
                break
            time.sleep(0.3)
        tails = {p.name: p.read_text()[-1500:] for p in (log, *self.folder.glob("*.out")) if p.exists()}
        self.stop()
        raise RuntimeError(f"SLURM did not come up waiting for {what}: {tails}")

    def stop(self) -> None:
        subprocess.run(["scancel", "--full", "-u", "root"], capture_output=True, env=self.env(), timeout=30)
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs.clear()


if __name__ == "__main__":
    why = missing()
    if why:
        sys.exit(why)
    cluster = SlurmCluster(Path(sys.argv[1]).resolve()).start()
    print(f"SLURM is up: export SLURM_CONF={cluster.conf}  (Ctrl-C stops it)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        cluster.stop()
