"""A single-node SLURM cluster on 127.0.0.1 for tests: munged, slurmctld and slurmd as children of the
test process, every file they use (munge key, slurm.conf, state, spool, pid and log files) under one
temp dir; the machine's own /etc/slurm and /etc/munge are never read or written.

No cgroups (ProctrackType=proctrack/linuxproc, TaskPlugin=task/none), so it runs in containers. No
accounting daemon (slurmdbd needs a MySQL server): `sacct` answers "accounting storage is disabled",
and finished jobs are read from the job-completion log instead (jobcomp/filetxt, `job_records`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

APT_PACKAGES = "slurmctld slurmd slurm-client munge"
COMMANDS = ("munged", "munge", "slurmctld", "slurmd", "sbatch", "srun", "sinfo", "squeue", "scancel", "scontrol")
# Environment variable: set to 1 where the cluster must start (CI), so that a broken set-up fails
# the SLURM tests instead of skipping them.
REQUIRE_ENV = "SSMOE_REQUIRE_SLURM"


class ClusterUnavailable(RuntimeError):
    """The daemons cannot start here; the message says why."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """Runs in each daemon before exec: the kernel kills it if the test process dies, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _tail(path: Path, lines: int = 3) -> str:
    """The last log lines that say something went wrong (or just the last lines)."""
    if not path.is_file():
        return f"(no {path.name})"
    text = path.read_text(errors="replace").splitlines()
    errors = [line for line in text if re.search(r"error|fatal", line, re.I) and "pmix" not in line.lower()]
    return " | ".join((errors or text)[-lines:]) or f"({path.name} is empty)"


class SlurmCluster:
    """One controller and one node (this machine's CPUs and memory) named after the host name."""

    def __init__(self, root: Path, kill_wait_s: int = 10) -> None:
        self.root = root
        self.conf = root / "slurm.conf"
        self.jobcomp = root / "log" / "jobcomp.txt"
        self.kill_wait_s = kill_wait_s  # seconds between scancel's SIGTERM and its SIGKILL
        self.hostname = socket.gethostname().split(".")[0]  # slurmd registers under its short host name
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.procs: dict[str, subprocess.Popen] = {}

    # -- start ---------------------------------------------------------------------------------------
    def start(self, timeout_s: float = 60) -> SlurmCluster:
        """Start munged, slurmctld and slurmd; return once `sinfo` shows the node idle.

        Raises ClusterUnavailable (after stopping whatever did start) when they cannot run here.
        """
        # The daemons live in /usr/sbin, which a non-root PATH often lacks.
        path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
        missing = [c for c in COMMANDS if shutil.which(c, path=path) is None]
        if missing:
            raise ClusterUnavailable(
                f"{', '.join(missing)} not installed (Debian: apt-get install {APT_PACKAGES}; `make test` "
                "installs them when run as root where apt-get is available)"
            )
        self.env["PATH"] = path
        if os.geteuid() != 0:
            raise ClusterUnavailable(
                f"slurmd starts jobs as their owner, so it runs as root; these tests run as uid {os.geteuid()}"
            )
        try:
            self._write_files()
            self._start_munge(timeout_s)
            self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
            self._spawn("slurmd", ["slurmd", "-D", "-f", str(self.conf)])
            self._wait_idle(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _node_line(self) -> str:
        """`slurmd -C`: this machine's CPUs, sockets/cores/threads and memory, as a NodeName line."""
        out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=30, env=self.env)
        first = out.stdout.splitlines()[0] if out.stdout else ""
        if out.returncode != 0 or not first.startswith("NodeName="):
            raise ClusterUnavailable(f"`slurmd -C` could not read this machine's resources: {out.stderr.strip()}")
        resources = " ".join(first.split()[1:])  # CPUs=.. Boards=.. ... RealMemory=..
        return f"NodeName={self.hostname} NodeAddr=127.0.0.1 {resources} State=UNKNOWN"

    def _write_files(self) -> None:
        for sub in ("munge", "state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "munge").chmod(0o711)  # munged wants its socket's directory searchable by clients
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        r = self.root
        self.conf.write_text(
            "\n".join(
                [
                    "ClusterName=ssmoetest",
                    f"SlurmctldHost={self.hostname}(127.0.0.1)",
                    f"SlurmctldPort={_free_port()}",
                    f"SlurmdPort={_free_port()}",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    "AuthType=auth/munge",
                    "CredType=cred/munge",
                    f"AuthInfo=socket={r}/munge/munge.sock",
                    f"StateSaveLocation={r}/state",
                    f"SlurmdSpoolDir={r}/spool",
                    f"SlurmctldPidFile={r}/slurmctld.pid",
                    f"SlurmdPidFile={r}/slurmd.pid",
                    f"SlurmctldLogFile={r}/log/slurmctld.log",
                    f"SlurmdLogFile={r}/log/slurmd.log",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_CPU_Memory",
                    "MpiDefault=none",
                    "MailProg=/bin/true",
                    "ReturnToService=2",
                    "SchedulerType=sched/builtin",
                    "AccountingStorageType=accounting_storage/none",
                    "JobAcctGatherType=jobacct_gather/none",
                    "JobCompType=jobcomp/filetxt",
                    f"JobCompLoc={self.jobcomp}",
                    f"KillWait={self.kill_wait_s}",
                    "MinJobAge=600",  # keep finished jobs visible to `scontrol show job` during a test
                    self._node_line(),
                    f"PartitionName=debug Nodes={self.hostname} Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )

    def _spawn(self, name: str, cmd: list[str]) -> None:
        out = open(self.root / "log" / f"{name}.out", "wb")  # noqa: SIM115 (the daemon writes to it)
        self.procs[name] = subprocess.Popen(
            cmd,
            cwd=self.root,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        out.close()

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                log = self.root / "munge" / "munged.log" if name == "munged" else self.root / "log" / f"{name}.log"
                said = [_tail(p) for p in (log, self.root / "log" / f"{name}.out") if p.is_file() and p.stat().st_size]
                raise ClusterUnavailable(f"{name} exited with status {proc.returncode}: {' | '.join(said)}")

    def _start_munge(self, timeout_s: float) -> None:
        m = self.root / "munge"
        socket_path = m / "munge.sock"
        self._spawn(
            "munged",
            [
                "munged", "--foreground", "--force", f"--key-file={m}/munge.key", f"--socket={socket_path}",
                f"--pid-file={m}/munged.pid", f"--log-file={m}/munged.log", f"--seed-file={m}/munged.seed",
            ],
        )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while True:
            self._check_alive()
            ok = subprocess.run(["munge", "-n", "-S", str(socket_path)], capture_output=True, timeout=10, env=self.env)
            if ok.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise ClusterUnavailable(f"munged did not answer on {socket_path}: {ok.stderr.decode().strip()}")
            time.sleep(0.2)

    def _wait_idle(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        state = ""
        while True:
            self._check_alive()
            out = self.run("sinfo", "-h", "-N", "-n", self.hostname, "-o", "%T", check=False)
            state = out.stdout.strip()
            if state == "idle":
                return
            if time.monotonic() > deadline:
                raise ClusterUnavailable(
                    f"node {self.hostname} not idle after {timeout_s:.0f} s (sinfo: {state or out.stderr.strip()}); "
                    f"slurmctld: {_tail(self.root / 'log' / 'slurmctld.log')}; "
                    f"slurmd: {_tail(self.root / 'log' / 'slurmd.log')}"
                )
            time.sleep(0.3)

    # -- use -----------------------------------------------------------------------------------------
    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a SLURM client command (sinfo, squeue, scancel, ...) against this cluster."""
        return subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, timeout=60, check=check)

    def queue(self) -> dict[str, str]:
        """Jobs still in the queue: job id (array jobs as ARRAYID_TASK) -> state (PENDING, RUNNING, ...)."""
        out = self.run("squeue", "-h", "-o", "%i %T").stdout
        return dict(line.split() for line in out.splitlines() if line.strip())

    def job_records(self) -> list[dict[str, str]]:
        """The job-completion log: one dict per job that ended (JobId, JobState, ExitCode, WorkDir, ...)."""
        if not self.jobcomp.is_file():
            return []
        return [
            dict(re.findall(r"(\w+)=(\S*)", line)) for line in self.jobcomp.read_text().splitlines() if line.strip()
        ]

    # -- stop ----------------------------------------------------------------------------------------
    def _cluster_pids(self) -> list[int]:
        """Every process that carries this cluster's SLURM_CONF: slurmstepd, job steps and their children
        (slurmstepd daemonizes, so it is no child of slurmd once it runs)."""
        marker = f"SLURM_CONF={self.conf}".encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            with contextlib.suppress(OSError):
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
        return pids

    def stop(self) -> None:
        """Cancel every job, stop the daemons, and kill whatever process of this cluster is left."""
        if self.procs.get("slurmctld") and self.procs["slurmctld"].poll() is None:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self.run("scancel", "--full", f"--nodelist={self.hostname}", "--user=root", check=False)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        for pid in self._cluster_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.procs.clear()
