"""One run at a time per output folder: an ``fcntl.flock`` lock that names its holder."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = ["FolderLock", "OutputFolderBusyError", "launch_rank", "pid_alive"]


def launch_rank() -> int:
    """The global rank before the Trainer exists (launched processes get it through the environment), or a
    positive number on a node other than node zero (a process started by hand on node ``NODE_RANK`` > 0 has
    no rank variable yet, only the node's)."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    rank = int(getattr(rank_zero_only, "rank", 0) or 0)
    return rank or int(os.environ.get("NODE_RANK") or os.environ.get("GROUP_RANK") or 0)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


class OutputFolderBusyError(RuntimeError):
    """Another run holds the :class:`FolderLock` of an output folder."""


class FolderLock:
    """An exclusive lock on an output folder for one run at a time, through the file ``<folder>/explain.lock``.

    ``acquire`` refuses (:class:`OutputFolderBusyError`, whose message names the run that holds the folder: its
    process id, host, start time and command) or, with ``wait=True``, waits for it to end (at most ``timeout``
    seconds). Under a distributed launch only global rank zero (the launching process) locks; on the other
    ranks, which belong to the run that rank zero locked, ``acquire`` and ``release`` do nothing. Use it as a
    context manager (``with FolderLock(out):``, which does not wait) or call ``acquire`` / ``release``.

    The lock is ``fcntl.flock``, not a file created with ``os.open(O_CREAT | O_EXCL)``: the kernel releases a
    flock when its holder dies, however it dies (SIGKILL, the OOM killer), so a killed run never leaves a lock
    that blocks, and no guess about whether a recorded process id still runs (ids are reused; another host's
    cannot be checked) can ever take the folder from a run that is alive. A file created with ``O_EXCL``
    outlives a killed creator, and two runs that both find it stale and replace it race with each other.
    The file stays in the folder (deleting it would let a waiting run lock a deleted file while a third
    creates a new one); it holds the holder's details and is emptied on release, so details found in a file
    that is not locked were left by a run that was killed: the next run says so and takes the folder over. On a
    file system without ``flock`` the run goes on unlocked, with a warning.
    """

    FILE_NAME = "explain.lock"

    def __init__(self, folder: str | Path, command: str | None = None) -> None:
        self.folder = Path(folder)
        self.path = self.folder / self.FILE_NAME
        #: What the lock file records as the holder's command (default: this process's command line).
        self.command = command if command is not None else " ".join(sys.argv)
        self._fd: int | None = None

    def acquire(self, wait: bool = False, timeout: float | None = None, poll: float = 0.2) -> None:
        """Lock the folder, or raise :class:`OutputFolderBusyError` naming the run that holds it; with
        ``wait=True`` wait for that run to end (``timeout``: at most this many seconds, None: no limit), checking
        every ``poll`` seconds. Messages (waiting, taking over from a killed run) go to stderr."""
        if not isinstance(wait, bool):
            raise TypeError(f"`wait` must be True or False, got {wait!r}")
        if timeout is not None and (isinstance(timeout, bool) or not 0 < float(timeout) < float("inf")):
            raise ValueError(f"`timeout` must be a positive number of seconds or None, got {timeout!r}")
        if self._fd is not None or launch_rank() != 0:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = None if timeout is None else time.monotonic() + float(timeout)
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = self._holder()
                if not wait or (deadline is not None and time.monotonic() >= deadline):
                    os.close(fd)
                    gave_up = f" (waited {float(timeout):g} s)" if wait else ""
                    raise OutputFolderBusyError(
                        f"the output folder {str(self.folder)!r} is in use by another run{gave_up}: {holder}; "
                        "wait for it to end, use another output folder, or --wait true (wait=True) to wait for it"
                    ) from None
                if not announced:
                    print(
                        f"waiting for the run that holds {str(self.folder)!r} to end: {holder}",
                        file=sys.stderr,
                    )
                    announced = True
                time.sleep(poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic())))
            except OSError as error:
                os.close(fd)
                if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise
                print(
                    f"warning: the file system of {str(self.folder)!r} cannot lock files ({error}): another run "
                    "writing the same folder at the same time would not be noticed",
                    file=sys.stderr,
                )
                return
        left = _describe(_parse(os.pread(fd, 1 << 16, 0)))
        if left is not None:
            print(
                f"taking over {str(self.folder)!r}: the run that held it ({left}) ended without releasing it "
                "(killed?)",
                file=sys.stderr,
            )
        details = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": self.command,
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(details).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Empty the lock file and unlock the folder (nothing when this object does not hold it)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # before unlocking: an empty unlocked file is a folder released cleanly
        finally:
            os.close(fd)  # which releases the flock

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _holder(self) -> str:
        """The details of the run that holds the lock; the holder writes them just after it locks, so a
        moment's wait covers a reader that comes in between."""
        for _ in range(10):
            try:
                details = _describe(_parse(self.path.read_bytes()))
            except OSError:
                details = None
            if details is not None:
                return details
            time.sleep(0.1)
        return (
            "a process that has not written its details (pid, host, start time, command) into its lock file"
        )


def _parse(data: bytes) -> dict[str, Any] | None:
    try:
        details = json.loads(data.decode())
    except (UnicodeDecodeError, ValueError):
        return None
    return details if isinstance(details, dict) else None


def _describe(details: Mapping[str, Any] | None) -> str | None:
    if not details:
        return None
    text = (
        f"pid {details.get('pid')} on host {details.get('host')}, started {details.get('started')}, "
        f"command: {details.get('command')}"
    )
    pid, host = details.get("pid"), details.get("host")
    if host == socket.gethostname() and isinstance(pid, int) and not pid_alive(pid):
        text += f" (pid {pid} is no longer running)"
    return text
