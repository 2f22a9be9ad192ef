"""A run folder's guard rails: one writer at a time, a folder checked writable before any work, and write
failures and interrupts reported as one sentence, with the records written so far intact.

The lock is an OS lock (``flock``) on ``<run folder>/.lock``, which the kernel drops when its process ends,
however it ends: ``kill -9`` leaves no stale lock. The file stays (removing it would let a second writer
lock a new file while the first still holds the old one); it only says who holds the lock. Readers
(``bench report``, ``bench compare``) never lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from anobench.core import BenchError

LOCK_FILE = ".lock"


class RunFolderLock:
    """``with RunFolderLock(run_dir):`` creates the folder if needed and holds its lock for the block.
    Refused (one sentence, exit 2, nothing written) when another process holds it, naming that process's
    PID and host, and when the folder cannot be created or written."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self._fd: int | None = None

    def __enter__(self) -> RunFolderLock:
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise BenchError(f"Run folder {self.run_dir} is a file, not a folder; pass --out a new or existing "
                             f"run folder.")
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise folder_error(self.run_dir, exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise BenchError(f"Run folder {self.run_dir} is in use by another bench run ({holder}); wait for it to "
                             f"finish, or pass another --out.") from None
        except OSError as exc:  # a filesystem without locks (some FUSE and SMB mounts): run, but say so
            print(f"warning: run folder {self.run_dir} cannot be locked ({exc.strerror}); make sure no other "
                  f"bench run writes into it.", file=sys.stderr)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
            with tempfile.TemporaryFile(dir=self.run_dir):  # the folder itself takes new files
                pass
        except OSError as exc:
            os.close(fd)
            raise folder_error(self.run_dir, exc) from None
        self._fd = fd
        return self

    def __exit__(self, *exc_info) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None


def _holder(fd: int) -> str:
    """Who holds the lock, as its file says (empty for the instant between its lock and its write)."""
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"PID {info['pid']} on host {info['host']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "PID and host not yet written"


def folder_error(run_dir: Path, exc: OSError) -> BenchError:
    """One sentence for a run folder that cannot be written: read-only, something in the way, no space."""
    where = f"{exc.filename}: " if exc.filename and str(exc.filename) != str(run_dir) else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return BenchError(f"No space left for run folder {run_dir} ({where}{exc.strerror}); the records written so "
                          f"far are intact: free some space and rerun the same command to continue.")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return BenchError(f"Run folder {run_dir} cannot be written ({where}{exc.strerror}); pass --out a folder "
                          f"you can write to.")
    return BenchError(f"Run folder {run_dir} cannot be created or written ({where}{exc.strerror}); pass --out a "
                      f"folder path you can write to.")


# ----------------------------------------------------------------------------------------------------------
# interrupts


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, as Ctrl-C raises KeyboardInterrupt: the same clean stop."""


class RunInterrupted(Exception):
    """A run stopped by SIGINT or SIGTERM; the CLI prints the message and exits 130 or 143 (128 + signal)."""

    def __init__(self, message: str, terminated: bool):
        super().__init__(message)
        self.exit_code = 128 + (signal.SIGTERM if terminated else signal.SIGINT)


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within the block, SIGTERM raises ``Terminated`` instead of ending the process on the spot, so that
    locks are released and executors closed as for Ctrl-C."""

    def stop(signum, frame):
        raise Terminated

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
