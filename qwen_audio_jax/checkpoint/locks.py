"""Locks on destinations, and Ctrl-C held over writes that must not be cut (checkpoint/safe_write.py uses both).

Locks are fcntl.flock on a small lock file that holds the holder's pid, so a refusal names the process; the
kernel drops them when a process dies (kill -9 included), so a lock never outlives its run, and the last
release removes the file. A directory destination that may not exist yet is locked through `.NAME.lock` beside
it; a work directory through a file inside it; a results file through `.NAME.lock` beside it. Locks are
re-entrant within one process (they guard against other processes).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from qwen_audio_jax.errors import OutputError

_held: dict[Path, list] = {}  # lock file -> [fd, count]: re-entrant within one process
_held_guard = threading.Lock()


def sidecar_lock(path: str | Path) -> Path:
    """The lock file of a destination that may not exist yet: `.NAME.lock` beside it."""
    path = Path(path).absolute()
    return path.parent / f".{path.name}.lock"


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        text = ""
    return f"process {text}" if text.isdigit() else "another process"


def _in_use(what, holder: str) -> OutputError:
    return OutputError(
        f"{what} is in use by {holder} (another qwen-audio-jax run writing it); wait for it to finish or "
        "choose another destination."
    )


def _take(lock_file: Path, what) -> int:
    while True:
        try:
            fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise OutputError(
                f"cannot write in {lock_file.parent} ({e.strerror}); choose a writable destination."
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise _in_use(what, holder) from None
        except OSError:  # a filesystem without flock (some network mounts): go on without the lock
            return fd
        try:  # its previous holder may have removed it between our open and flock: then take the new one
            same = os.path.samestat(os.fstat(fd), os.stat(lock_file))
        except FileNotFoundError:
            same = False
        if same:
            with contextlib.suppress(OSError):  # a full disk: held all the same, its holder just goes unnamed
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        os.close(fd)


def acquire(lock_file: str | Path, what) -> Path:
    """Takes the exclusive lock `lock_file` (re-entrant within this process). OutputError "WHAT is in use by
    process N" when another process holds it."""
    lock_file = Path(lock_file).absolute()
    with _held_guard:
        if lock_file in _held:
            _held[lock_file][1] += 1
        else:
            _held[lock_file] = [_take(lock_file, what), 1]
    return lock_file


def release(lock_file: str | Path, *, fully: bool = False) -> None:
    """Gives the lock back (the last release removes the lock file)."""
    lock_file = Path(lock_file).absolute()
    with _held_guard:
        entry = _held.get(lock_file)
        if entry is None:
            return
        entry[1] = 0 if fully else entry[1] - 1
        if entry[1] > 0:
            return
        del _held[lock_file]
    fd = entry[0]
    with contextlib.suppress(OSError):
        if os.path.samestat(os.fstat(fd), os.stat(lock_file)):
            os.unlink(lock_file)  # while still holding it: a waiting process then retries on a fresh file
    os.close(fd)


@atexit.register
def _release_all() -> None:
    for lock_file in list(_held):
        release(lock_file, fully=True)


@contextlib.contextmanager
def locked(lock_file: str | Path, what) -> Iterator[None]:
    lock_file = acquire(lock_file, what)
    try:
        yield
    finally:
        release(lock_file)


def check_not_in_use(lock_file: str | Path, what) -> None:
    """Refuses (OutputError) when another process holds `lock_file`; takes nothing and creates no file."""
    lock_file = Path(lock_file).absolute()
    if lock_file in _held:
        return
    try:
        fd = os.open(lock_file, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return  # no lock file: nobody holds it (a holder keeps it in place)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _in_use(what, _holder(fd)) from None
    except OSError:
        pass
    finally:
        os.close(fd)


def dir_is_live(directory: Path) -> bool:
    """True while a running process holds `directory` (an atomic write's temp) locked."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Holds a Ctrl-C (SIGINT) until the block ends: a write that a library finishes in background threads
    (Orbax) must not be cut, or its files land after the cleanup. A second Ctrl-C stops at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is not signal.default_int_handler:  # ignored (a background job) or someone else's handler
        yield
        return
    hits = []

    def hold(signum, frame):
        hits.append(signum)
        if len(hits) > 1:
            raise KeyboardInterrupt
        print("interrupting: finishing the current write first (Ctrl-C again to stop at once)", file=sys.stderr)

    signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if hits:
        raise KeyboardInterrupt
