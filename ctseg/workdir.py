"""One `ctseg run` at a time per work dir, and which process a run belongs to.

Two runs on one work dir would both train and both push, each without the other's model as its
baseline. `WorkdirLock` takes an exclusive `flock` on WORKDIR/.ctseg.lock (released by the kernel
when the process ends, however it ends) and writes its holder there, so a second run can say who
holds it. `this_process` and `process_state` tell whether the process recorded on a run is still
there: by pid and process start time on the same host, by heartbeat from another host.
Nothing here imports TensorFlow or TFX: the CLI takes the lock before anything heavy.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

from ctseg.errors import CtsegError

# What a work dir holds (`ctseg run`; `ctseg compile` and `submit` keep their spec under it too).
DEFAULT_WORKDIR = "out"
PIPELINE_DIR = "pipeline"  # the pipeline root: artifacts
METADATA_FILE = "metadata.sqlite"  # ML Metadata
SERVING_DIR = "serving"  # pushed models, <version>/
LOCK_FILE = ".ctseg.lock"
HEARTBEAT_S = 30.0
# A run on another host whose heartbeat is older than this is taken as gone.
STALE_AFTER_S = 4 * HEARTBEAT_S

_REASONS = {
    errno.EACCES: "permission denied (choose a --workdir you can write to)",
    errno.EPERM: "permission denied (choose a --workdir you can write to)",
    errno.EROFS: "it is on a read-only file system",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exhausted",
    errno.ENOTDIR: "a file stands where a folder is needed",
    errno.EEXIST: "a file stands where a folder is needed",
    errno.ENAMETOOLONG: "the path is too long",
}


def os_error_sentence(what: str, path: Path | str, error: OSError) -> CtsegError:
    """`error` as one sentence about `path`, without Python's "[Errno N]" text."""
    reason = _REASONS.get(error.errno) or (error.strerror or type(error).__name__).lower()
    return CtsegError(f"cannot use {path} as {what}: {reason}")


def workdir_path(workdir: str | os.PathLike) -> Path:
    """The one spelling of a work dir (symlinks and `..` resolved), so that the lock and everything under
    it name one folder however the user wrote it."""
    return Path(workdir).resolve()


def prepare_workdir(workdir: str | os.PathLike) -> Path:
    """The work dir (`workdir_path`), created if missing; a CtsegError in words when it cannot be."""
    path = workdir_path(workdir)
    if path.exists() and not path.is_dir():
        raise CtsegError(f"cannot use {path} as the work dir: it is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".ctseg-write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise os_error_sentence("the work dir", path, e) from None
    return path


# ---- who runs

def _process_start_ticks(pid: int) -> Optional[int]:
    """Start time of a process in clock ticks since boot (Linux /proc), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def this_process() -> dict[str, Any]:
    """pid, host and start time of this process, as recorded on a run and in the lock file."""
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    ticks = _process_start_ticks(os.getpid())
    if ticks is not None:
        record["pid_start_ticks"] = ticks
    return record


def process_state(pid: Optional[int], host: Optional[str], pid_start_ticks: Optional[int] = None,
                  heartbeat: Optional[float] = None, now: Optional[float] = None) -> str:
    """'alive', 'gone' or 'unknown' for the process recorded on a run.

    On this host: the pid exists (and, where recorded, started when it did). On another host: its
    heartbeat is at most STALE_AFTER_S old; without a heartbeat there is no telling.
    """
    if pid is None or host is None:
        return "unknown"
    if host == socket.gethostname():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return "gone"
        except PermissionError:  # exists, owned by someone else
            pass
        if pid_start_ticks is not None:
            ticks = _process_start_ticks(int(pid))
            if ticks is not None and ticks != int(pid_start_ticks):
                return "gone"  # the pid now belongs to another process
        return "alive"
    if heartbeat is None:
        return "unknown"
    return "alive" if (now or time.time()) - float(heartbeat) <= STALE_AFTER_S else "gone"


# ---- the lock

_held: dict[Path, "WorkdirLock"] = {}  # lock file -> the lock this process holds on it (re-entry is a no-op)


class WorkdirBusy(CtsegError):
    """Another process holds the work dir."""


def _holder_text(holder: dict[str, Any]) -> str:
    if not holder:
        return "another process"
    since = time.strftime("%H:%M:%S", time.localtime(holder["started"])) if holder.get("started") else "?"
    run = f", run {holder['run_id']}" if holder.get("run_id") else ""
    return f"another `ctseg run` (pid {holder.get('pid', '?')} on {holder.get('host', '?')} since {since}{run})"


class WorkdirLock:
    """Exclusive use of a work dir for one run; `wait=True` queues behind the holder instead of refusing.

    Re-entrant within a process: the CLI takes it before writing the default phantom, and
    `run_local` takes it again around the pipeline.
    """

    def __init__(self, workdir: str | os.PathLike, *, wait: bool = False,
                 on_wait: Optional[Callable[[str], None]] = None):
        self.path = workdir_path(workdir) / LOCK_FILE
        self.wait, self.on_wait = wait, on_wait
        self.fd: Optional[int] = None
        self.owner: Optional[WorkdirLock] = None
        self.record: dict[str, Any] = {}
        self._stop = threading.Event()
        self._beat: Optional[threading.Thread] = None

    def __enter__(self) -> "WorkdirLock":
        held = _held.get(self.path)
        if held is not None:
            self.owner = held
            return held
        prepare_workdir(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                who = _holder_text(read_holder(self.path.parent))
                if not self.wait:
                    raise WorkdirBusy(f"the work dir {self.path.parent} is in use by {who}; let it finish, "
                                      f"pass --wait to start when it ends, or give another --workdir") from None
                if self.on_wait:
                    self.on_wait(f"waiting for {who} to finish with {self.path.parent}")
                fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        self.record = this_process()
        self._write()
        _held[self.path] = self
        self._beat = threading.Thread(target=self._heartbeat, daemon=True, name="ctseg-workdir-heartbeat")
        self._beat.start()
        return self

    def note(self, **fields: Any) -> None:
        """Adds e.g. the run id to what a waiting or refused run is told."""
        target = self.owner or self
        target.record.update(fields)
        target._write()

    def _write(self) -> None:
        data = json.dumps({**self.record, "heartbeat": time.time()}).encode()
        try:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, data, 0)
        except OSError:  # the lock itself holds; the note is a courtesy
            pass

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            self._write()

    def __exit__(self, *exc) -> None:
        if self.owner is not None:
            return
        self._stop.set()
        _held.pop(self.path, None)
        try:
            os.ftruncate(self.fd, 0)
        except OSError:
            pass
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None


def read_holder(workdir: str | os.PathLike) -> dict[str, Any]:
    """What the holder of a work dir's lock wrote about itself ({} if nothing readable)."""
    try:
        return json.loads((Path(workdir) / LOCK_FILE).read_text() or "{}")
    except (OSError, ValueError):
        return {}
