"""Who runs on an output: ``OUT/_LOCK`` (written by pipeline/outputs.py's ``acquire_lock``).

Standard library only: the pre-flight (pipeline/preflight.py) reads a lock too, so that a second
run on an output a running job holds is told so at once, before "not empty".
"""
from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import dataclass


@dataclass(frozen=True)
class LockHolder:
    """What ``OUT/_LOCK`` holds: who runs on this output."""
    pid: int
    host: str
    started: str
    job: str
    token: str
    pid_start: str | None = None   # the process's start time (Linux), to tell a reused pid

    def describe(self) -> str:
        return f"{self.job} (pid {self.pid} on host {self.host}, started {self.started})"

    def is_dead(self) -> bool:
        """True only when provably gone: a process of this host that no longer exists (or whose
        pid now belongs to a newer process). A holder on another host is never judged dead."""
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass  # alive, another user's
        start = process_start(self.pid)
        return bool(self.pid_start and start and start != self.pid_start)

    @classmethod
    def me(cls, job: str) -> "LockHolder":
        return cls(pid=os.getpid(), host=socket.gethostname(), started=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                   job=job, token=uuid.uuid4().hex, pid_start=process_start(os.getpid()))


def process_start(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks since boot); None where unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def parse_lock(content: bytes) -> LockHolder:
    """The holder a lock file's bytes name; ValueError for anything that is not a lock pairscore
    wrote (not JSON, other keys, a pid that is not a positive integer, ...)."""
    data = json.loads(content.decode("utf-8"))
    if not isinstance(data, dict):
        raise ValueError("a lock holds a JSON object")
    holder = LockHolder(**data)        # TypeError for missing or unknown keys
    texts = (holder.host, holder.started, holder.job, holder.token)
    if (not isinstance(holder.pid, int) or isinstance(holder.pid, bool) or holder.pid <= 0
            or not all(isinstance(text, str) for text in texts)
            or not (holder.pid_start is None or isinstance(holder.pid_start, str))):
        raise ValueError(f"not a lock pairscore wrote: {data!r}")
    return holder


# A lock that cannot be read (being written, not ours, malformed): held by someone never judged dead.
UNREADABLE_LOCK = LockHolder(pid=0, host="?", started="?", job="an unknown process (unreadable lock)", token="?")


def in_use(output: str, holder: LockHolder, lock_path: str) -> str:
    """The one line for an ``--output`` that a live run holds."""
    return (f"--output {output!r} is in use by {holder.describe()}: wait for it to finish, or choose another "
            f"--output (remove {lock_path} only if that run is gone)")
