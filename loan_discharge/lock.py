"""One discharge run at a time per items file and per data directory.

Two runs over the same items file would both send every item and rewrite the file over each
other; two runs sharing a ``data_dir`` would share (and set aside) one journal. So a run holds two
locks for its whole life, both found from the configuration, never from the working directory:

- ``<data_dir>/discharge.lock``
- ``<items file>.lock``, beside the items file (two configurations may name the same file with
  different data directories)

They are ``fcntl.flock`` locks, taken without waiting. The kernel drops a flock when its process
ends, however it ends (``kill -9`` included), so a lock left by a dead run is free at once and
the next run takes it over. The holder writes its pid, host, start time, items file and data
directory into each lock file, so a refused run can say who is working; a lock file that still
holds a record when it is taken over was left by a run that did not end cleanly. On release the
file is removed while still locked; a run that opened it just before then finds, once it holds
the lock, that the path no longer leads to that file, and starts again with the new one.

flock is exact between processes of one host. On NFS, Linux emulates it with POSIX locks that
the server keeps, so it also holds across hosts, but a crashed host's lock lasts until the
server gives it up (NFSv4: when the host's lease expires).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["RunLock", "RunLocked", "Holder", "DATA_DIR_LOCK"]

DATA_DIR_LOCK = "discharge.lock"


@dataclass(frozen=True)
class Holder:
    """Who holds (or held) a lock, as recorded in the lock file."""

    pid: int | None
    host: str
    started: str
    items_file: str
    data_dir: str

    def describe(self) -> str:
        """'pid 1234 on host, started 2024-05-01 10:00:00 UTC'."""
        return f"pid {self.pid} on {self.host}, started {self.started}"

    def to_json(self) -> str:
        """The line written into the lock file."""
        return json.dumps(self.__dict__) + "\n"

    @classmethod
    def from_text(cls, text: str) -> Holder | None:
        """The record in a lock file, or None if it is empty or unreadable (cut short by a crash)."""
        try:
            data: Any = json.loads(text)
            return cls(
                pid=int(data["pid"]), host=str(data["host"]), started=str(data["started"]),
                items_file=str(data["items_file"]), data_dir=str(data["data_dir"]),
            )
        except (ValueError, TypeError, KeyError):
            return None


class RunLocked(Exception):
    """Another run holds one of the locks; the message names it and says what to do."""

    def __init__(self, path: Path, holder: Holder | None) -> None:
        self.path = path
        self.holder = holder
        if holder is None:  # it has just taken the lock and not yet written its record
            message = f"another discharge run holds {path}: wait for it to finish"
        else:
            message = (
                f"another discharge run ({holder.describe()}) is working on {holder.items_file} "
                f"in {holder.data_dir}: wait for it to finish"
            )
        super().__init__(message + "; nothing was sent")


def _this_process(items_file: Path, data_dir: Path) -> Holder:
    return Holder(
        pid=os.getpid(),
        host=socket.gethostname(),
        started=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        items_file=str(items_file),
        data_dir=str(data_dir),
    )


class RunLock:
    """The locks of one run over *items_file* with *data_dir*; ``acquire`` or refuse at once."""

    def __init__(self, items_file: Path, data_dir: Path) -> None:
        self.items_file = Path(os.path.realpath(items_file))
        self.data_dir = Path(os.path.realpath(data_dir))
        self.paths = (self.data_dir / DATA_DIR_LOCK, self.items_file.with_name(self.items_file.name + ".lock"))
        self.taken_over: list[Holder] = []  # records of runs that ended without releasing
        self._held: list[tuple[Path, int]] = []

    def acquire(self) -> RunLock:
        """Take both locks, or raise RunLocked (holding neither) if another run has one.

        OSError if a lock file cannot be created (data_dir missing, no write permission).
        """
        me = _this_process(self.items_file, self.data_dir)
        try:
            for path in self.paths:
                fd, previous = _lock(path)
                self._held.append((path, fd))
                if previous is not None and previous not in self.taken_over:
                    self.taken_over.append(previous)
                os.ftruncate(fd, 0)
                os.pwrite(fd, me.to_json().encode(), 0)
        except BaseException:
            self.release()
            raise
        return self

    def release(self) -> None:
        """Remove the lock files (still locked, so no other run can be fooled) and let go."""
        while self._held:
            path, fd = self._held.pop()
            try:
                path.unlink(missing_ok=True)
            finally:
                os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire() if not self._held else self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _lock(path: Path) -> tuple[int, Holder | None]:
    """Lock *path* without waiting: (descriptor, record left in it by a run that died) or RunLocked."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = Holder.from_text(_read(fd))
            os.close(fd)
            raise RunLocked(path, holder) from None
        except BaseException:
            os.close(fd)
            raise
        # The holder may have removed the file between our open and our flock: then this lock
        # guards a file nobody else can find. Start again with whatever the path holds now.
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        mine = os.fstat(fd)
        if current is not None and (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino):
            return fd, Holder.from_text(_read(fd))
        os.close(fd)


def _read(fd: int) -> str:
    return os.pread(fd, 4096, 0).decode("utf-8", errors="replace")
