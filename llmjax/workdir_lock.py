"""One training per workdir at a time.

Two trainings of one workdir (two launches of the same sweep, a relaunch while the last job's
processes still ran) interleaved their logs and raced each other's checkpoint saves and
deletions. llmjax-train's primary process holds an exclusive `flock` on the workdir's
`train.lock` from before its first write there until it ends; a second training is refused at
once, before it writes anything. The kernel drops the lock with the process however it dies, so
a killed run never leaves a stale lock to clear by hand. flock is per open file, and on NFS
Linux takes it as a POSIX lock, which other hosts see: one lock per job, taken by its primary
process, covers jobs on several hosts sharing the workdir.

Readers (llmjax-eval, -report, -ckpt, -export, -sample) never take it: they are safe beside a
training, and must not stop one starting.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import os
import socket
import sys
from pathlib import Path

from llmjax.rundir import RunDir, WorkdirError

LOCK = "train.lock"  # In the workdir; holds "PID HOST" of the training holding it.
_BUSY = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)  # What flock(LOCK_NB) fails with when held.


def check_free(run_dir: RunDir) -> None:
    """Refuses a workdir a training holds now (for a launcher, before it starts any process);
    creates and writes nothing."""
    try:
        fd = os.open(run_dir.path / LOCK, os.O_RDWR)  # Read-write: NFS locks only those exclusively.
    except FileNotFoundError:
        return
    except PermissionError:
        raise WorkdirError(f"--workdir {run_dir.given}: cannot open its {LOCK} to see whether a training holds it "
                           f"(another user's?); give it write permission, or train in another --workdir.") from None
    try:
        if _lock(fd, run_dir):
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def held(run_dir: RunDir):
    """The workdir's lock for the with-block; WorkdirError at once if another training holds
    it. The workdir (and any parent) is created for the lock file, and what was created is
    removed again if the block wrote nothing else there, as is the lock file: a run that fails
    before its first write leaves no trace."""
    path = run_dir.path / LOCK
    created = list(itertools.takewhile(lambda d: not d.exists(), (run_dir.path, *run_dir.path.parents)))
    run_dir.path.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            locked = _lock(fd, run_dir)
        except BaseException:
            os.close(fd)
            raise
        if not locked or _same_file(fd, path):
            break
        os.close(fd)  # Its last holder removed it meanwhile: a lock on it locks nothing.
    if locked:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
    else:  # A filesystem without flock: the run goes on unguarded (warned).
        os.close(fd)
    try:
        yield
    finally:
        if locked:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # While holding it: whoever opened it meanwhile sees it gone.
            os.close(fd)
        for directory in created:  # Innermost first; only while empty.
            try:
                directory.rmdir()
            except OSError:
                break


def _lock(fd: int, run_dir: RunDir) -> bool:
    """Takes the lock on `fd` without waiting: True if taken, False where the filesystem has no
    flock (warned: the run goes on unguarded); WorkdirError naming the holder if held."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as error:
        if error.errno not in _BUSY:
            print(f"warning: cannot lock {run_dir.path / LOCK} ({error.strerror}); nothing stops a "
                  f"second training of this workdir at once.", file=sys.stderr, flush=True)
            return False
    holder = os.pread(fd, 200, 0).decode(errors="replace").split()
    who = f" (pid {holder[0]} on {holder[1]})" if len(holder) == 2 else ""
    stop = f"kill {holder[0]} on {holder[1]}" if len(holder) == 2 else "stop it"
    raise WorkdirError(f"--workdir {run_dir.given}: another training is running in it{who}; wait for it to "
                       f"end or {stop} (it checkpoints on SIGTERM), or train in another --workdir.")


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False
