"""The ledger's files are private to the gateway's user: they hold every caller's labels, usage
and attempt messages.

Directories the ledger creates are 0700 and every file it creates or opens is 0600, whatever
the process umask: modes are set explicitly (fchmod/chmod after creation), never left to the
umask, and never set by changing the umask, which is global to the process.

A directory that already exists is left as it is: it may be shared on purpose (a /var/lib
directory a backup group reads, say). When it lets others in, a warning names it; the files in
it are 0600 either way, so its mode only decides who may list their names.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("tollway.ledger")

FILE_MODE = 0o600
DIRECTORY_MODE = 0o700

_warned: set[Path] = set()


def private_directory(path: Path) -> None:
    """Create `path` and its missing parents 0700; warn (once) when an existing one is open to others."""
    missing: list[Path] = []
    probe = path
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, DIRECTORY_MODE)
        except FileExistsError:
            continue  # made meanwhile by someone else: theirs, not ours to change
        os.chmod(directory, DIRECTORY_MODE)
    if not missing:
        _warn_if_open(path)


def open_private(path: Path, flags: int) -> int:
    """os.open(path, flags | O_CREAT) with the file 0600, whether it was created now or was
    left, looser, by an earlier version."""
    fd = os.open(path, flags | os.O_CREAT, FILE_MODE)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != FILE_MODE:
            os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def make_private(path: Path) -> None:
    """An existing file made 0600 (a SQLite -wal or -shm file left by an earlier version)."""
    try:
        if stat.S_IMODE(path.stat().st_mode) != FILE_MODE:
            os.chmod(path, FILE_MODE)
    except FileNotFoundError:
        pass


def _warn_if_open(path: Path) -> None:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return  # the caller's own mkdir/open reports what is wrong with it
    if mode & 0o077 and path not in _warned:
        _warned.add(path)
        log.warning("the ledger directory %s is open to other users (mode %04o); its files are 0600, "
                    "but consider `chmod 700 %s`", path, mode, path)
