"""``OUT/_LOCK``: who runs on an output (step 2 of the protocol, pipeline/output/__init__.py).

A run creates the lock atomically (``O_CREAT|O_EXCL``) holding its pid, host, start time and job,
takes over the lock of a provably dead holder, and removes its own lock when it ends. Object
stores have no exclusive create through Beam's FileSystems: there the lock is best effort.

Standard library at import: the pre-flight (pipeline/preflight.py) reads a lock too, so that a
second run on an output a running job holds is told so at once, before "not empty". The functions
that touch storage import Beam's FileSystems where they run.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
import uuid
from dataclasses import asdict, dataclass

from pipeline.output.layout import LOCK_FILE, OutputError, is_remote


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


def read_lock(output: str) -> LockHolder | None:
    """The holder named in ``OUT/_LOCK``; None when there is no lock. An unreadable lock (being
    written, or not ours) is reported as a holder with pid 0 that is never judged dead."""
    from apache_beam.io.filesystems import FileSystems

    path = FileSystems.join(output, LOCK_FILE)
    try:
        with FileSystems.open(path, compression_type="uncompressed") as handle:
            return parse_lock(handle.read())
    except FileNotFoundError:
        return None
    except Exception:  # noqa: BLE001 - any unreadable lock is a lock we must not take
        if not FileSystems.exists(path):
            return None
        return UNREADABLE_LOCK


def acquire_lock(output: str, job: str) -> tuple[LockHolder, LockHolder | None]:
    """Create ``OUT/_LOCK`` for this process: (me, the stale holder taken over or None).

    Raises OutputError naming the holder when a live run (or one that cannot be judged dead)
    holds it, and when the directory cannot be written."""
    from apache_beam.io.filesystems import FileSystems

    me = LockHolder.me(job)
    path = FileSystems.join(output, LOCK_FILE)
    content = (json.dumps(asdict(me), indent=2) + "\n").encode("utf-8")
    stale = None
    for _ in range(3):
        if _create_exclusive(path, content, output):
            return me, stale
        holder = read_lock(output)
        if holder is None:
            continue  # released in between: try again
        if not holder.is_dead():
            raise OutputError(in_use(output, holder, path))
        _take_over(path, holder, output)
        stale = holder
        print(f"note: {path} was left by {holder.describe()}, which is no longer running; taking it over",
              file=sys.stderr)
    raise OutputError(f"--output {output!r}: could not take the lock {path} (other runs keep taking it)")


def _create_exclusive(path: str, content: bytes, output: str) -> bool:
    """True if this call created ``path``; False if it existed."""
    if is_remote(path):
        from apache_beam.io.filesystems import FileSystems

        # Best effort: Beam's FileSystems has no create-if-absent; check, write, read back.
        if FileSystems.exists(path):
            return False
        with FileSystems.create(path) as handle:
            handle.write(content)
        with FileSystems.open(path, compression_type="uncompressed") as handle:
            return handle.read() == content
    try:
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    except OSError as err:
        raise OutputError(f"--output {output!r} cannot be written: {err.strerror or err}") from None
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(content)
    return True


def _take_over(path: str, holder: LockHolder, output: str) -> None:
    """Remove a dead holder's lock so that the next exclusive create can win. Locally the lock
    is first renamed aside, so of two runs taking over the same stale lock only one removes it;
    a fresh lock moved aside by mistake is put back."""
    if is_remote(path):
        from pipeline.output.paths import delete_file

        delete_file(path)
        return
    aside = f"{path}.stale-{uuid.uuid4().hex}"
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    try:
        with open(aside, encoding="utf-8") as handle:
            moved = json.load(handle).get("token")
    except (OSError, ValueError):
        moved = None
    if moved != holder.token:
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)   # put the live run's lock back (never over a newer one)
        os.remove(aside)
        raise OutputError(f"--output {output!r} was just locked by another run: wait for it to finish")
    os.remove(aside)


def release_lock(output: str, me: LockHolder) -> None:
    """Remove ``OUT/_LOCK`` if it is still ours."""
    from apache_beam.io.filesystems import FileSystems

    from pipeline.output.paths import delete_file

    holder = read_lock(output)
    if holder is not None and holder.token == me.token:
        with contextlib.suppress(Exception):
            delete_file(FileSystems.join(output, LOCK_FILE))
