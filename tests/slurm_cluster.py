"""A throw-away single-node SLURM cluster on 127.0.0.1 for the SLURM profile test.

Everything lives in one temporary directory: a private munge key and socket, a slurm.conf on free
ports, the state and spool directories, the daemons' logs, and shims for the client commands.
Nothing under /etc is written: the client commands find the cluster through ``SLURM_CONF`` and,
inside jobs, through the shims on PATH (the slurm-jobstep executor drops every ``SLURM_*`` variable
before its nested ``srun``). A system SLURM or munge, or a second copy of this test on the same
machine, is left alone. Built for Debian's ``slurm-wlm`` and ``munge`` (Slurm 22.05+, munge 0.5);
no accounting database, so ``sacct`` has nothing to say and the executor plugin polls ``squeue``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sinfo", "sbatch", "squeue", "srun", "scancel", "scontrol")
# Client commands that get a shim naming this cluster's slurm.conf (see SlurmCluster.write_shims).
SHIMMED = CLIENTS + ("sacct", "sacctmgr", "salloc", "sattach", "sbcast", "sshare", "sstat")
PARTITION = "main"  # the partition profiles/slurm names


def _which(name):
    """``name`` on PATH, or in the sbin directories a non-login root shell may lack."""
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin:/usr/local/sbin"
    return shutil.which(name, path=path)


def missing_commands():
    """The daemons and client commands this cluster needs that are not installed."""
    return [name for name in DAEMONS + CLIENTS if _which(name) is None]


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_hardware():
    """``slurmd -C``'s view of this machine (CPUs, sockets, cores, threads, RealMemory)."""
    out = subprocess.run([_which("slurmd"), "-C"], capture_output=True, text=True, timeout=30).stdout
    line = next((ln for ln in out.splitlines() if ln.startswith("NodeName=")), "")
    fields = dict(tok.split("=", 1) for tok in line.split() if "=" in tok)
    fields.pop("NodeName", None)
    fields.pop("UpTime", None)
    if "CPUs" not in fields:
        fields = {"CPUs": str(os.cpu_count() or 1)}
    memory = int(fields.get("RealMemory", 0)) or (os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) >> 20
    fields["RealMemory"] = str(int(memory * 0.9))  # a bit under the machine's, or slurmd drains the node
    return fields


@dataclass
class SlurmCluster:
    root: Path
    nodename: str
    hardware: dict
    conf: Path = field(init=False)
    procs: dict = field(default_factory=dict)

    def __post_init__(self):
        self.conf = self.root / "slurm.conf"

    @property
    def cpus(self):
        return int(self.hardware["CPUs"])

    @property
    def memory_mb(self):
        return int(self.hardware["RealMemory"])

    @property
    def bin(self):
        return self.root / "bin"

    def env(self, base=None):
        """An environment whose SLURM commands talk to this cluster (jobs inherit it)."""
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = str(self.conf)
        env["PATH"] = os.pathsep.join([str(self.bin), env.get("PATH", ""), "/usr/sbin:/sbin"])
        return env

    # -- set-up ---------------------------------------------------------------------------------

    def write_config(self):
        r = self.root
        for d in ("state", "spool", "log", "munge"):
            (r / d).mkdir(exist_ok=True)
        key = r / "munge" / "munge.key"
        mungekey = _which("mungekey")
        if mungekey:
            subprocess.run([mungekey, "--create", f"--keyfile={key}"], check=True, capture_output=True)
        else:  # munge < 0.5.14 has create-munge-key, which only writes /etc/munge; random bytes do
            key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        hw = " ".join(f"{k}={v}" for k, v in self.hardware.items())
        lines = [
            "# Written by tests/slurm_cluster.py: one node on 127.0.0.1, no accounting.",
            "ClusterName=musinterp-test",
            f"SlurmctldHost={self.nodename}(127.0.0.1)",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={r / 'munge' / 'munge.socket'}",
            f"StateSaveLocation={r / 'state'}",
            f"SlurmdSpoolDir={r / 'spool' / '%n'}",
            f"SlurmctldPidFile={r / 'slurmctld.pid'}",
            f"SlurmdPidFile={r / 'slurmd.pid'}",
            f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={r / 'log' / 'slurmd.log'}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "MpiDefault=none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "SchedulerType=sched/backfill",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none",
            "ReturnToService=2",
            "MinJobAge=300",  # finished jobs stay visible to squeue for the plugin's status checks
            "KillWait=5",
            "InactiveLimit=0",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=60",
            f"PlugStackConfig={r / 'plugstack.conf'}",
            f"NodeName={self.nodename} NodeAddr=127.0.0.1 NodeHostname={self.nodename} {hw} State=UNKNOWN",
            f"PartitionName={PARTITION} Nodes={self.nodename} Default=NO MaxTime=INFINITE State=UP",
        ]
        (r / "plugstack.conf").write_text("")  # no SPANK plugins from the system's /etc/slurm
        (r / "spool" / self.nodename).mkdir()
        self.conf.write_text("\n".join(lines) + "\n")
        self.write_shims()

    def write_shims(self):
        """``srun`` etc. that name this cluster's slurm.conf whatever the environment says.

        Inside a job the slurm-jobstep executor runs ``srun`` with every ``SLURM_*`` variable but a
        few removed, ``SLURM_CONF`` included; a real cluster's srun then reads /etc/slurm, which this
        cluster leaves alone.
        """
        self.bin.mkdir(exist_ok=True)
        for name in SHIMMED:
            real = _which(name)
            if real is None:
                continue
            shim = self.bin / name
            shim.write_text(f'#!/bin/sh\nSLURM_CONF="{self.conf}" exec "{real}" "$@"\n')
            shim.chmod(0o755)

    def _start(self, name, argv):
        log = open(self.root / "log" / f"{name}.out", "w")
        self.procs[name] = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=self.env(), cwd=self.root, start_new_session=True
        )
        log.close()

    def start(self, timeout=90):
        r = self.root
        self._start(
            "munged",
            [
                _which("munged"),
                "--foreground",
                "--force",
                f"--socket={r / 'munge' / 'munge.socket'}",
                f"--key-file={r / 'munge' / 'munge.key'}",
                f"--pid-file={r / 'munge' / 'munged.pid'}",
                f"--log-file={r / 'log' / 'munged.log'}",
                f"--seed-file={r / 'munge' / 'munged.seed'}",
            ],
        )
        self._wait(lambda: (r / "munge" / "munge.socket").exists(), 20, "munged did not create its socket")
        self._start("slurmctld", [_which("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        self._wait(lambda: self._sinfo() is not None, 30, "slurmctld did not answer sinfo")
        self._start("slurmd", [_which("slurmd"), "-D", "-N", self.nodename, "-f", str(self.conf)])
        self._wait(lambda: (self._sinfo() or "").strip() == "idle", timeout, f"node {self.nodename} not idle")

    def _sinfo(self):
        try:
            p = subprocess.run(
                ["sinfo", "--noheader", "-N", "-o", "%t"], capture_output=True, text=True, timeout=10, env=self.env()
            )
        except subprocess.TimeoutExpired:
            return None
        return p.stdout if p.returncode == 0 else None

    def _wait(self, ready, timeout, what):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{', '.join(dead)} exited during start-up\n{self.log_tails()}")
            if ready():
                return
            time.sleep(0.5)
        raise RuntimeError(f"{what} after {timeout} s (sinfo: {self._sinfo()!r})\n{self.log_tails()}")

    def log_tails(self, lines=25):
        out = []
        for log in sorted((self.root / "log").glob("*")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {log.name} ---\n" + "\n".join(text))
        return "\n".join(out)

    # -- tear-down ------------------------------------------------------------------------------

    def stop(self):
        subprocess.run(["scancel", "--full", "--user", "root"], env=self.env(), capture_output=True, timeout=30)
        for name in reversed(list(self.procs)):  # slurmd, slurmctld, then munged
            proc = self.procs[name]
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        self.procs.clear()


def start_cluster():
    """Start munged, slurmctld and slurmd on 127.0.0.1; the caller stops them with ``stop()``."""
    # A short path: the munge socket must fit a unix socket name (108 bytes).
    root = Path(tempfile.mkdtemp(prefix="slurm-"))
    nodename = socket.gethostname().split(".")[0]
    cluster = SlurmCluster(root=root, nodename=nodename, hardware=_node_hardware())
    cluster.write_config()
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    return cluster
