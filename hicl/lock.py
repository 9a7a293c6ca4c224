"""One writer per run directory: an OS file lock on `<run>/.hicl.lock`.

pretrain (and its resume) holds the lock for the whole run; linear-eval and export take it while they
read checkpoints and write results. A second writer fails at once with one line naming the holder's
PID instead of interleaving metrics or reading a checkpoint mid-swap. The lock is the kernel's
(`fcntl.flock` on POSIX, `msvcrt.locking` on Windows), so it disappears with the process that held
it: a killed run never leaves a stale lock behind. The file itself stays; it only carries the PID.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from types import TracebackType

from hicl.errors import HiclError

LOCK_NAME = ".hicl.lock"

try:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)

except ImportError:  # Windows
    import msvcrt

    def _try_lock(fd: int) -> bool:
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


class RunLock:
    """Exclusive, non-blocking lock of one run directory; a context manager.

    Re-entrant within a process (pretrain followed by its own linear evaluation, or a test that
    resumes in-process), because a second `flock` on a new descriptor would refuse its own holder.
    """

    _held: dict[Path, tuple[int, int]] = {}  # resolved run dir -> (fd, depth)

    def __init__(self, run_dir: Path, read_only_ok: bool = False):
        """`read_only_ok`: a reader (export) goes on unlocked where the directory cannot be written,
        since then no writer can be at work in it either."""
        self.run_dir = Path(run_dir)
        self.read_only_ok = read_only_ok
        self._locked = False
        self.path = self.run_dir / LOCK_NAME
        self._key = self.run_dir.resolve()

    def acquire(self) -> RunLock:
        if self._key in self._held:
            fd, depth = self._held[self._key]
            self._held[self._key] = (fd, depth + 1)
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except PermissionError:
            if self.read_only_ok:
                return self
            raise
        except OSError as exc:
            if self.read_only_ok and exc.errno == errno.EROFS:
                return self
            raise
        self._locked = True
        if not _try_lock(fd):
            try:
                holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            except OSError:  # Windows: the holder's locked byte cannot be read
                holder = "unknown"
            os.close(fd)
            raise HiclError(
                f"{self.run_dir}: in use by another hicl process (pid {holder}); wait for it to finish or stop it"
            )
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._held[self._key] = (fd, 1)
        return self

    def release(self) -> None:
        if not self._locked and self._key not in self._held:
            return
        fd, depth = self._held[self._key]
        if depth > 1:
            self._held[self._key] = (fd, depth - 1)
            return
        del self._held[self._key]
        _unlock(fd)
        os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


def lock_holder(run_dir: Path) -> str | None:
    """The PID (as recorded) of the process holding `run_dir`'s lock, or None when nobody holds it.
    Only looks: the lock file is neither created nor rewritten."""
    path = Path(run_dir) / LOCK_NAME
    if not path.is_file():
        return None
    if Path(run_dir).resolve() in RunLock._held:  # flock would not refuse this process its own lock
        return str(os.getpid())
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return None
    try:
        if _try_lock(fd):
            _unlock(fd)
            return None
        return os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
    except OSError:
        return "unknown"
    finally:
        os.close(fd)
