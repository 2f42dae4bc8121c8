"""Where an export writes, and how it replaces the previous one without leaving a half-written folder.

Everything is built in a staging folder inside OUT/<model>/ (one file system, so renames are atomic) while
this process holds the folder's lock. Only after every artifact passed its load check and parity are the
files renamed into place and the manifest written; if any of that fails, what they replaced is put back.
A Ctrl-C or SIGTERM arriving during those few renames is ignored: by then the export is complete, and
stopping halfway would leave new artifacts under the old manifest. The lock dies with its process, even on
SIGKILL, so staging left in the folder while we hold the lock is stale. (A SIGKILL during the renames
themselves, a window of milliseconds, is the one fault this cannot cover.)
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Iterator

from core.errors import InputError, disk_full_cause, disk_full_error
from core.manifest import MANIFEST_NAME

STAGING_PREFIX = ".staging-"
LOCK_NAME = ".mobile-export.lock"
LOGS_FOLDER = "logs"
LABELS_NAME = "labels.txt"
# Leftovers a killed run can leave: its staging folder and write_json_atomically's temporary manifest.
STALE_PREFIXES = (STAGING_PREFIX, f".{MANIFEST_NAME}.")
IGNORED_WHILE_PUBLISHING = (signal.SIGINT, signal.SIGTERM)


def prepare_model_dir(out: Path, model_name: str) -> Path:
    """OUT/<model>/ and its logs/ folder, or an InputError saying why they cannot be written."""
    model_dir = out / model_name
    for folder in (out, model_dir):
        if folder.exists() and not folder.is_dir():
            raise InputError(f"{folder} is a file, not a folder", hint="pass an --out folder (or remove that file)")
    try:
        (model_dir / LOGS_FOLDER).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        if disk_full_cause(error):
            raise disk_full_error(out) from None
        raise InputError(f"cannot create {model_dir}: {error.strerror}", hint="pass an --out folder you can write to") from None
    return model_dir


@contextlib.contextmanager
def exclusive_staging(model_dir: Path) -> Iterator[Path]:
    """A fresh staging folder in `model_dir`, removed on the way out, while no other export writes there."""
    import fcntl

    with open(model_dir / LOCK_NAME, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"another mobile-export is writing to {model_dir}",
                             hint="wait for it to finish, or pass another --out") from None
        remove_stale_work(model_dir)
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=model_dir)).resolve()  # converters run in other cwds
        try:
            yield staging
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def remove_stale_work(model_dir: Path) -> list[str]:
    """Remove what killed runs left behind. Call only while holding the folder's lock."""
    removed = []
    for entry in model_dir.iterdir():
        if entry.name.startswith(STALE_PREFIXES):
            _remove(entry)
            removed.append(entry.name)
    return removed


class Publisher:
    """Renames staged files to their final names, keeping what each replaced until the export succeeds."""

    def __init__(self, backup_dir: Path):
        self._backup_dir = backup_dir
        self._moves: list[tuple[Path, Path | None]] = []  # (final, where its previous version waits)

    def move(self, staged: Path, final: Path) -> None:
        self._set_aside(final)
        os.replace(staged, final)

    def remove(self, final: Path) -> None:
        """Take a file or folder out of the model folder; roll_back puts it back."""
        self._set_aside(final)

    def _set_aside(self, final: Path) -> None:
        previous = None
        if final.exists() or final.is_symlink():
            self._backup_dir.mkdir(exist_ok=True)
            previous = self._backup_dir / f"{len(self._moves)}-{final.name}"
            os.replace(final, previous)  # an .mlpackage is a folder: os.replace cannot overwrite a full one
        self._moves.append((final, previous))

    def roll_back(self) -> None:
        for final, previous in reversed(self._moves):
            _remove(final)
            if previous is not None:
                os.replace(previous, final)
        self._moves.clear()


@contextlib.contextmanager
def publishing(staging: Path) -> Iterator[Publisher]:
    publisher = Publisher(staging / "replaced")
    with interrupts_ignored():
        try:
            yield publisher
        except BaseException:
            publisher.roll_back()
            raise


@contextlib.contextmanager
def interrupts_ignored() -> Iterator[None]:
    """Ignore Ctrl-C and SIGTERM for the block: the publishing renames run to the end (or roll back)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.signal(number, signal.SIG_IGN) for number in IGNORED_WHILE_PUBLISHING}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler if handler is not None else signal.SIG_DFL)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
