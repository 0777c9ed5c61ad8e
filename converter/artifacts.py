"""The output folder: one whole run, published in one step, by one run at a time.

A reader of ``build/<name>/`` (a person, a CI step, the next ``check``) must see the files of
one run, never a mix, whatever happens to the run: an error, a signal, SIGKILL, a full disk.
So a run builds every file in a staging folder beside the output folder (same parent, so a
rename is atomic) and switches the two in one step at the end:

``.<out>.edgeconv-lock``  an ``flock`` held for the whole run (beside the folder, which is swapped)
``.<out>.edgeconv-new``   the staging folder this run fills
``.<out>.edgeconv-old``   fallback only: the previous set, moved aside during the switch

On Linux the switch is ``renameat2(RENAME_EXCHANGE)``: the output folder holds the old set
until the call and the new one after it, with no moment in between; the staging name then
holds the old set, which is deleted. Where exchange is unavailable (another OS, a file system
that refuses it) the old folder is renamed aside and the new one renamed in; a run killed
between those two renames leaves no output folder but a complete ``.edgeconv-old``, and the
recovery rule every run applies under the lock restores it: a missing output folder with an
``.edgeconv-old`` beside it is the previous set, moved back; every other leftover is deleted.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from .errors import OutputError

STAMP = ".edgeconv.json"
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
# Test-only hooks: with the variable set to a path, the publisher touches "<path>.reached" and waits until
# <path> exists, so a test can signal or kill a run at that exact point. Inert when unset.
PAUSE_BEFORE_SWITCH = "EDGECONV_TEST_PAUSE_BEFORE_SWITCH"
PAUSE_MID_SWITCH = "EDGECONV_TEST_PAUSE_MID_SWITCH"


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM, with what it left of the output folder (for the CLI's message)."""

    def __init__(self, signum: int = signal.SIGINT, outcome: str | None = None) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.outcome = outcome


def _read_stamp(out: Path) -> dict[str, object] | None:
    try:
        doc = json.loads((out / STAMP).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _listing(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def check_output_dir(out: Path, recipe_name: str, force: bool) -> None:
    """Refuse a folder that is not this recipe's (``force`` takes over another recipe's, never foreign files).

    A run replaces the whole folder, so a file in it that edgeconv did not write would be deleted:
    such a folder is refused, with the files named.
    """
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputError(f"--out {out}: exists and is not a folder; choose another --out")
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    stamp = _read_stamp(out)
    if stamp is None:
        raise OutputError(
            f"--out {out}: holds files not written by edgeconv ({_listing(entries)}); a run replaces its output "
            "folder as a whole, so it never takes over one it did not create: choose another --out"
        )
    owner = stamp.get("recipe")
    if owner != recipe_name and not force:
        raise OutputError(
            f"--out {out}: holds recipe '{owner}', not '{recipe_name}'; "
            "choose another --out or pass --force to overwrite"
        )
    listed = stamp.get("files")
    if isinstance(listed, list) and not force:  # stamps of older versions list no files
        ours = {str(name).split("/")[0] for name in listed} | {STAMP}
        extra = [name for name in entries if name not in ours]
        if extra:
            raise OutputError(
                f"--out {out}: holds files edgeconv did not write ({_listing(extra)}); a run replaces the whole "
                "folder, so move them elsewhere, or pass --force to delete them"
            )


def write_atomic(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same folder and rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        Path(tmp).chmod(0o666 & ~_umask())  # mkstemp creates 0600; artifacts are ordinary files
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_file(path: Path, data: bytes) -> None:
    """Write one new file of a staged set, durably (the staging folder is private: no temp file needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories atomically (Linux renameat2); False when the system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _pause(variable: str) -> None:
    """Test hook (see PAUSE_BEFORE_SWITCH): announce this point and wait for the go-ahead file."""
    gate = os.environ.get(variable)
    if not gate:
        return
    Path(f"{gate}.reached").write_text(str(os.getpid()))
    while not Path(gate).exists():
        time.sleep(0.02)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Defer SIGINT/SIGTERM across the switch, so the published flag is set before the handler runs."""
    held = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class OutputFolder:
    """The output folder of one run: locked, checked and staged on entry, switched in by ``publish``.

    Use as a context manager around the whole run; leaving it (normally or not) deletes what was
    not published and releases the lock.
    """

    def __init__(self, out: Path, recipe_name: str, force: bool = False) -> None:
        self.shown = out
        self.path = Path(out).resolve()  # a symlinked folder is swapped where it really is; ".." is gone
        parent, name = self.path.parent, self.path.name
        self.lock = parent / f".{name}.edgeconv-lock"
        self.staging = parent / f".{name}.edgeconv-new"
        self.aside = parent / f".{name}.edgeconv-old"
        self.recipe_name = recipe_name
        self.force = force
        self.published = False
        self.had_previous = False
        self._fd: int | None = None
        self._created: list[Path] = []

    def __enter__(self) -> OutputFolder:
        if self.path.exists() and not self.path.is_dir():
            raise OutputError(f"--out {self.shown}: exists and is not a folder; choose another --out")
        parent = self.path.parent
        in_the_way = next((p for p in reversed(self.path.parents) if p.exists() and not p.is_dir()), None)
        if in_the_way is not None:
            raise OutputError(f"--out {self.shown}: {in_the_way} is a file, not a folder; choose another --out")
        self._created = [p for p in (parent, *parent.parents) if not p.exists()]  # removed again if unpublished
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(
                f"--out {self.shown}: cannot create the folder it goes in ({e.strerror}: {e.filename}); "
                "choose another --out"
            ) from e
        self._acquire()
        try:
            self._recover()
            check_output_dir(self.path, self.recipe_name, self.force)
            self.had_previous = self.path.is_dir()
            if self.had_previous and not os.access(self.path, os.W_OK | os.X_OK):
                raise OutputError(f"--out {self.shown}: the folder is read-only, so its files cannot be replaced")
            try:
                self.staging.mkdir()
            except OSError as e:
                raise OutputError(
                    f"--out {self.shown}: cannot write in {parent} ({e.strerror}); choose another --out"
                ) from e
            if self.had_previous:
                self.staging.chmod(self.path.stat().st_mode & 0o7777)
        except BaseException:
            self._release()
            self._remove_created()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        try:
            self._recover()
        finally:
            self._release()
            self._remove_created()
        if isinstance(error, KeyboardInterrupt):
            outcome = self.outcome()
            if isinstance(error, Interrupted):
                error.outcome = outcome
                return
            raise Interrupted(signal.SIGINT, outcome) from None

    def outcome(self) -> str:
        """What the output folder holds now, in words (for an interrupted run's message)."""
        if self.published:
            return f"{self.shown} holds this run's complete set of files"
        previous = "keeps the previous run's files" if self.had_previous else "was not created"
        return f"nothing of this run was published; {self.shown} {previous}"

    def publish(self, files: dict[str, bytes]) -> None:
        """Write ``files`` (and the stamp) into the staging folder and switch it in, in one step."""
        for name, data in files.items():
            write_file(self.staging / name, data)
        stamp = {"recipe": self.recipe_name, "files": sorted(files)}
        write_file(self.staging / STAMP, json.dumps(stamp).encode() + b"\n")
        for folder in sorted({self.staging, *((self.staging / n).parent for n in files)}, key=lambda p: -len(p.parts)):
            _fsync_dir(folder)
        _pause(PAUSE_BEFORE_SWITCH)
        with _signals_held():
            if not self.path.exists():
                self.staging.rename(self.path)
            elif not _exchange(self.staging, self.path):  # else the staging name holds the previous set now
                self.path.rename(self.aside)
                _pause(PAUSE_MID_SWITCH)  # signals stay held: a run killed here is what _recover repairs
                self.staging.rename(self.path)
            self.published = True
        _fsync_dir(self.path.parent)
        _pause(PAUSE_MID_SWITCH)  # published; the previous set still waits beside it to be deleted

    def _recover(self) -> None:
        """Restore a previous set moved aside by a killed run, then delete every leftover."""
        if self.aside.is_dir() and not self.path.exists():
            self.aside.rename(self.path)
        for leftover in (self.staging, self.aside):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover)
            elif leftover.exists() or leftover.is_symlink():
                leftover.unlink()

    def _remove_created(self) -> None:
        """Folders this run created for an output it did not publish (deepest first, only if still empty)."""
        if self.published:
            return
        for folder in self._created:
            with contextlib.suppress(OSError):
                folder.rmdir()

    def _acquire(self) -> None:
        while True:
            try:
                fd = os.open(self.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as e:
                raise OutputError(
                    f"--out {self.shown}: cannot write in {self.lock.parent} ({e.strerror}); "
                    "choose a folder you can write to"
                ) from e
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise OutputError(
                    f"--out {self.shown}: another edgeconv run (pid {holder}) is writing this folder; "
                    "wait for it to finish, or choose another --out"
                ) from None
            # The holder before us may have deleted the lock file as it finished: lock the file that is there.
            try:
                same = os.path.samestat(os.fstat(fd), self.lock.stat())
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def _release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.lock.unlink()  # while still locked, so a waiter sees it is gone and retries
        os.close(self._fd)
        self._fd = None


def write_outputs(out: Path, recipe_name: str, files: dict[str, bytes], force: bool = False) -> None:
    """Publish ``files`` as the whole content of ``out`` (checked, locked, switched in one step)."""
    with OutputFolder(out, recipe_name, force) as folder:
        folder.publish(files)


def file_record(path: Path, data: bytes) -> dict[str, object]:
    """``{path, bytes, sha256}`` of an artifact, as the report lists it."""
    return {"path": str(path), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
