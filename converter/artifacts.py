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

Commands that change a few files of a published set (``deploy``, ``analyze``, ``check``) go the
same way (``update_outputs``): under the lock, the current set is copied into the staging folder
(hard links where possible), the changed files are written there and the two are switched, so a
reader sees the set before the command or after it. Such a command reads the folder, works for
seconds or minutes, then writes: it names the files it read with their sha256, and the update is
refused if they changed meanwhile (another run published in between).

Signals: SIGINT and SIGTERM that arrive during the switch are recorded by Python-level handlers
and raised once the switch is over, so the message says what the folder really holds.
(``pthread_sigmask`` is not enough: it blocks only the calling thread, and with TensorFlow's
threads alive the kernel hands the signal to another one, after which Python runs the handler
in the main thread anyway.)
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from converter.errors import OutputError
from converter.supervise import run_pid

STAMP = ".edgeconv.json"
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
# Test-only hooks: with the variable set to a path, the publisher touches "<path>.reached" and waits until
# <path> exists, so a test can signal or kill a run at that exact point. Inert when unset.
PAUSE_BEFORE_SWITCH = "EDGECONV_TEST_PAUSE_BEFORE_SWITCH"
PAUSE_MID_SWITCH = "EDGECONV_TEST_PAUSE_MID_SWITCH"  # old set gone from the name, flag not yet set
PAUSE_AFTER_SWITCH = "EDGECONV_TEST_PAUSE_AFTER_SWITCH"
# The files edgeconv writes beside a report (a folder without stamp is updated file by file).
REPORT_FILES = ("report.json", "report.md", "junit.xml", "report.html")
# write_atomic's temporary files: ".<name>.<8 mkstemp characters>.tmp"; left behind only by a killed process.
_TEMP = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp")


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


def _ours_for_temp(listed: object) -> set[str]:
    """Top-level names whose temporary files (``_TEMP``) edgeconv may have left in a folder it stamped."""
    names = {str(name).split("/")[0] for name in listed} if isinstance(listed, list) else set()
    return names | set(REPORT_FILES)


def _is_leftover(name: str, ours: set[str]) -> bool:
    match = _TEMP.fullmatch(name)
    return match is not None and match["name"] in ours


def check_output_dir(out: Path, recipe_name: str, force: bool) -> None:
    """Refuse a folder that is not this recipe's.

    A run replaces the whole folder, so every file in it is deleted. ``force`` takes over the folder
    of another recipe and deletes files in it that edgeconv's stamp does not list; a non-empty
    folder without edgeconv's stamp is refused with or without ``force``, with its files named.
    Temporary files a killed edgeconv left (``.<name>.<random>.tmp`` of a file it writes there) are
    leftovers, not foreign files: they go with the old set.
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
            "folder as a whole, so it never takes over one it did not create, not even with --force: "
            "choose another --out"
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
        temp_of = _ours_for_temp(listed)
        extra = [name for name in entries if name not in ours and not _is_leftover(name, temp_of)]
        if extra:
            raise OutputError(
                f"--out {out}: holds files edgeconv did not write ({_listing(extra)}); a run replaces the whole "
                "folder, so move them elsewhere, or pass --force to delete them"
            )


def _stage(path: Path, data: bytes) -> Path:
    """Write ``data`` durably to a temporary file beside ``path`` (named as ``_TEMP`` expects)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.chmod(0o666 & ~_umask())  # mkstemp creates 0600; artifacts are ordinary files
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def write_atomic(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same folder and rename: readers never see half a file."""
    tmp = _stage(path, data)
    try:
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
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
def signals_deferred() -> Iterator[list[int]]:
    """Record SIGINT/SIGTERM instead of acting on them; the caller raises for them after the block.

    Python runs signal handlers in the main thread between bytecodes, whichever thread the kernel
    delivered to, so replacing the handlers defers the signal for the whole process (a signal
    mask would hold it back from the calling thread only). A signal ignored stays ignored; outside
    the main thread Python cannot handle signals at all, and nothing is changed.
    """
    caught: list[int] = []
    previous: dict[int, Any] = {}  # a handler as signal.signal returned it

    def record(signum: int, _frame: object) -> None:
        caught.append(signum)

    try:
        for signum in (signal.SIGINT, signal.SIGTERM):
            handler = signal.getsignal(signum)
            if handler is None or handler == signal.SIG_IGN:
                continue
            previous[signum] = signal.signal(signum, record)
    except ValueError:  # not the main thread
        pass
    try:
        yield caught
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _reason(error: OSError) -> str:
    """The errno text and the file it concerns (``str(error)`` for errors raised with a message only)."""
    if not error.strerror:
        return str(error)
    return f"{error.strerror}: {error.filename}" if error.filename else error.strerror


class OutputFolder:
    """The output folder of one run: locked, checked and staged on entry, switched in by ``publish``.

    Use as a context manager around the whole run; leaving it (normally or not) deletes what was
    not published and releases the lock. With ``update=True`` (see ``update_outputs``) entering
    fills the staging folder with a copy of the current set instead, and ``apply`` switches in
    that copy with some files changed.
    """

    def __init__(
        self, out: Path, recipe_name: str, force: bool = False, *, update: bool = False, where: str | None = None
    ) -> None:
        self.shown = out
        self.where = where or f"--out {out}"
        self.path = Path(out).resolve()  # a symlinked folder is swapped where it really is; ".." is gone
        parent, name = self.path.parent, self.path.name
        self.lock = parent / f".{name}.edgeconv-lock"
        self.staging = parent / f".{name}.edgeconv-new"
        self.aside = parent / f".{name}.edgeconv-old"
        self.recipe_name = recipe_name
        self.force = force
        self.updating = update
        self.published = False
        self.had_previous = False
        self._stamp: dict[str, object] = {}
        self._fd: int | None = None
        self._created: list[Path] = []

    def __enter__(self) -> OutputFolder:
        if self.updating:
            self._enter_update()
            return self
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
            self._recover_now()
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

    def _enter_update(self) -> None:
        """Lock, clean leftovers and copy the current set into the staging folder (links where possible)."""
        self._acquire()
        try:
            self._recover_now()
            stamp = _read_stamp(self.path)
            if stamp is None:
                raise OutputError(
                    f"{self.where}: {self.shown} is no longer a folder edgeconv wrote; nothing was written"
                )
            self._stamp = stamp
            self.had_previous = True
            if not os.access(self.path, os.W_OK | os.X_OK):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self.shown))
            temp_of = _ours_for_temp(stamp.get("files"))
            root = str(self.path)

            def skip(folder: str, names: list[str]) -> set[str]:
                ours = temp_of if folder == root else set(names)
                return {n for n in names if _is_leftover(n, ours) or (folder == root and n == STAMP)}

            shutil.copytree(self.path, self.staging, symlinks=True, ignore=skip, copy_function=_link_or_copy)
        except BaseException:
            with contextlib.suppress(OSError):
                self._recover()
            self._release()
            raise

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        with signals_deferred() as caught:  # cleaning up is not cut short by a second Ctrl-C
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
        if caught and error is None:
            raise Interrupted(caught[0], self.outcome())

    def outcome(self) -> str:
        """What the output folder holds now, in words (for an interrupted or failed run's message)."""
        if self.updating:
            return (
                f"{self.shown} holds the updated files"
                if self.published
                else f"nothing was written; {self.shown} is unchanged"
            )
        if self.published:
            return f"{self.shown} holds this run's complete set of files"
        previous = "keeps the previous run's files" if self.had_previous else "was not created"
        return f"nothing of this run was published; {self.shown} {previous}"

    def publish(self, files: dict[str, bytes]) -> None:
        """Write ``files`` (and the stamp) into the staging folder and switch it in, in one step.

        A failing write, fsync or switch (full disk, I/O error) is an ``OutputError`` naming the folder
        and saying what it holds: the previous set, whole.
        """
        try:
            for name, data in files.items():
                write_file(self.staging / name, data)
            stamp = {"recipe": self.recipe_name, "files": sorted(files)}
            write_file(self.staging / STAMP, json.dumps(stamp).encode() + b"\n")
            self._switch(files)
        except OSError as e:
            raise OutputError(
                f"--out {self.shown}: cannot write this run's files ({_reason(e)}); {self.outcome()}. "
                "Free space or fix the file system, then run again"
            ) from e

    def apply(self, changes: dict[str, bytes]) -> None:
        """Replace ``changes`` in the copied set (update mode) and switch it in; other files stay as they were."""
        for name, data in changes.items():
            target = self.staging / name
            if target.is_dir() and not target.is_symlink():
                raise OSError(f"{self.shown / name} exists and is not a file")
            target.unlink(missing_ok=True)  # a link to the current file: never written through
            write_file(target, data)
        listed = self._stamp.get("files")
        stamp = (
            {**self._stamp, "files": sorted({*map(str, listed), *changes})} if isinstance(listed, list) else self._stamp
        )
        write_file(self.staging / STAMP, json.dumps(stamp).encode() + b"\n")
        self._switch(changes)

    def _switch(self, files: dict[str, bytes]) -> None:
        for folder in sorted({self.staging, *((self.staging / n).parent for n in files)}, key=lambda p: -len(p.parts)):
            _fsync_dir(folder)
        _pause(PAUSE_BEFORE_SWITCH)
        with signals_deferred() as caught:
            if not self.path.exists():
                self.staging.rename(self.path)
            elif _exchange(self.staging, self.path):  # the staging name holds the previous set now
                _pause(PAUSE_MID_SWITCH)  # a run killed here has published; the next one deletes the old set
            else:
                self.path.rename(self.aside)
                _pause(PAUSE_MID_SWITCH)  # a run killed here is what _recover repairs
                self.staging.rename(self.path)
            self.published = True
            _fsync_dir(self.path.parent)
        if caught:
            raise Interrupted(caught[0])  # __exit__ says what the folder holds
        _pause(PAUSE_AFTER_SWITCH)

    def _recover_now(self) -> None:
        """``_recover`` at the start of a run, with a signal during it raised only once it is done."""
        with signals_deferred() as caught:
            self._recover()
        if caught:
            raise Interrupted(caught[0], self.outcome())

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
                if self.updating:
                    raise
                raise OutputError(
                    f"--out {self.shown}: cannot write in {self.lock.parent} ({e.strerror}); "
                    "choose a folder you can write to"
                ) from e
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                if self.updating:
                    raise OutputError(
                        f"{self.where}: another edgeconv run (pid {holder}) is writing {self.shown}; nothing was "
                        "written: wait for it to finish, then run this command again"
                    ) from None
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
        os.write(fd, f"{run_pid()}\n".encode())  # the supervised child's: its parent, the pid the user started
        self._fd = fd

    def _release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.lock.unlink()  # while still locked, so a waiter sees it is gone and retries
        os.close(self._fd)
        self._fd = None


def _link_or_copy(src: str, dst: str) -> str:
    """A file of the current set into the staging copy: a hard link (files of a set are never
    written in place), or a durable copy where the file system has no links."""
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst)
        with open(dst, "rb") as f:  # noqa: PTH123 - fsync needs the descriptor
            os.fsync(f.fileno())
    return dst


def write_outputs(out: Path, recipe_name: str, files: dict[str, bytes], force: bool = False) -> None:
    """Publish ``files`` as the whole content of ``out`` (checked, locked, switched in one step)."""
    with OutputFolder(out, recipe_name, force) as folder:
        folder.publish(files)


def sha256_of(path: Path) -> str | None:
    """The sha256 of a file's bytes, None when it cannot be read (``update_outputs``' ``based_on``)."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def update_outputs(
    out: Path,
    changes: dict[str, bytes],
    *,
    where: str,
    fix: str,
    again: str,
    based_on: dict[str, str | None] | None = None,
) -> None:
    """Replace some files of a published folder, all or none, if the files it was based on are unchanged.

    ``based_on`` maps file names to the sha256 the caller read (``sha256_of``); if one differs now,
    another run wrote the folder meanwhile and nothing is written (``OutputError``; ``again`` says
    what to do). A folder edgeconv stamped is updated under its lock as a whole (see the module
    docstring); a folder without the stamp (a report copied elsewhere, a CI download that dropped
    hidden files) is not swapped (it may hold anything): its files are staged beside their targets
    and renamed in together. ``where`` starts every message, ``fix`` ends a failed write's.
    """
    if _read_stamp(out) is None:
        _replace_files(out, changes, where=where, fix=fix, again=again, based_on=based_on)
        return
    folder = OutputFolder(out, "", update=True, where=where)
    try:
        with folder:
            _verify(out, based_on, where, again)
            folder.apply(changes)
    except OSError as e:
        raise OutputError(
            f"{where}: cannot write {', '.join(changes)} beside it in {out} ({_reason(e)}); {folder.outcome()}. {fix}"
        ) from e


def _verify(out: Path, based_on: dict[str, str | None] | None, where: str, again: str) -> None:
    for name, digest in (based_on or {}).items():
        if digest is None or sha256_of(out / name) != digest:
            raise OutputError(
                f"{where}: {name} changed while this command ran (another edgeconv run wrote {out} "
                f"meanwhile), so its result belongs to files that are gone; nothing was written: {again}"
            )


def _replace_files(
    folder: Path,
    changes: dict[str, bytes],
    *,
    where: str,
    fix: str,
    again: str,
    based_on: dict[str, str | None] | None,
) -> None:
    """A folder edgeconv did not stamp: stage every file beside its target, then rename them all in."""
    staged: list[tuple[Path, Path]] = []
    replaced = 0
    try:
        _verify(folder, based_on, where, again)
        for name, data in changes.items():
            target = folder / name
            if target.exists() and not target.is_file():
                raise OSError(f"{target} exists and is not a file")
            staged.append((_stage(target, data), target))
        with signals_deferred() as caught:
            for stage, target in staged:
                stage.replace(target)
                replaced += 1
        if caught:
            raise Interrupted(caught[0], f"{folder} holds the updated files")
    except OSError as e:
        done = "nothing was written" if not replaced else f"only {', '.join(list(changes)[:replaced])} were replaced"
        raise OutputError(
            f"{where}: cannot write {', '.join(changes)} beside it in {folder} ({e.strerror or e}); {done}. {fix}"
        ) from e
    finally:
        for stage, _ in staged[replaced:]:
            stage.unlink(missing_ok=True)


def file_record(path: Path, data: bytes) -> dict[str, object]:
    """``{path, bytes, sha256}`` of an artifact, as the report lists it."""
    return {"path": str(path), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
