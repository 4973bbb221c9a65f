# The set of output files of a run, replaced as a whole.
#
# A run writes every file (events, reports, a parallel run's part folders)
# into a staging folder beside OUTDIR and, when everything is written,
# swaps it in.  A reader -- a dashboard, a script, a person with the folder
# open -- sees the previous run's set or the new one, never events.csv of one
# run beside summary.json of another, and never a file of an earlier run that
# this run did not write (a stale events.parquet).  A failure or an
# interruption before the swap removes the staging folder: nothing is left
# behind and OUTDIR is as it was.
#
# How the swap is done depends on what OUTDIR is:
#
#   * missing: the staging folder is renamed to OUTDIR (one rename);
#   * a folder holding only our outputs (a previous run's): the two folders
#     are exchanged in one step (Linux renameat2 RENAME_EXCHANGE), then the
#     old set is deleted; where the exchange is not available, two renames
#     (for a moment OUTDIR is absent, never mixed);
#   * a folder holding anything else (`-o .`, a folder shared with the
#     captures), a mount point or the working directory: nothing of the
#     user's is touched; the
#     staging folder is made inside OUTDIR, our stale files are removed, the
#     new files are moved in one by one and summary.json, the manifest that
#     lists the set (`outputs`), goes last.
#
# A staging folder is named after the process that made it; one whose process
# is gone (killed by SIGKILL) is removed by the next run into the same OUTDIR.
#
# Live capture does not stage: it rewrites its reports in place every
# interval (each file atomically, outputs/csvfile.py).
from __future__ import annotations

import ctypes
import errno
import os
import shutil
import tempfile
from pathlib import Path

from analyzer.errors import OutputError

# Every name a run may write in OUTDIR (a folder holding only these is ours).
OUTPUT_NAMES = frozenset({
    "events.csv", "events.jsonl", "events.parquet", "hosts.csv", "codes.csv", "summary.json",
    "report.html", "connections.csv", "anomalies.csv",
})
MANIFEST = "summary.json"  # written last when files are moved in one by one
STAGING_PREFIX = ".analyzer-new-"
# Errors that say the output side failed, not the input: reported as OutputError.
OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EACCES,
                           errno.EPERM, errno.ENOTDIR, errno.EISDIR})

_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def check_target(target: Path) -> None:
    """OutputError unless `target` is (or can become) a folder: not a file, not below one."""
    probe = target
    while True:
        if probe.exists() or probe.is_symlink():
            if not probe.is_dir():
                what = "is a file, not a folder" if probe == target else f"is below {probe}, which is a file"
                raise OutputError(f"{target}: {what}; choose another -o")
            return
        if probe.parent == probe:
            return
        probe = probe.parent


def is_ours(folder: Path) -> bool:
    """True when `folder` holds nothing but a run's outputs (or leftovers of one)."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return False
    for entry in entries:
        name = entry.name
        if name in OUTPUT_NAMES and entry.is_file(follow_symlinks=False):
            continue
        if name.startswith(STAGING_PREFIX) or name.startswith(".part-"):
            continue  # a staging or part folder an earlier, killed run left
        if name.startswith(".") and name.endswith(".tmp") and entry.is_file(follow_symlinks=False):
            continue  # an AtomicWriter temporary of an earlier version
        return False
    return True


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux >= 3.15); False when the call is unavailable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def output_error(exc: OSError, target: Path, staging: Path | None = None) -> OutputError | None:
    """The OutputError an OSError from writing stands for, or None when it is not one.

    An error naming a file elsewhere (a key log, a policy file) is not one.
    """
    name = exc.filename
    if name is not None and staging is not None:
        where = Path(os.path.realpath(os.fsdecode(name)))
        if not any(p == where or p in where.parents for p in (staging, Path(os.path.realpath(target)))):
            return None
    code = exc.errno
    if code is None:  # pyarrow's IO errors carry the errno in their text only
        text = str(exc)
        code = next((c for c in OUTPUT_ERRNOS if f"[errno {c}]" in text.lower()), None)
        reason = os.strerror(code) if code is not None else ""
    else:
        reason = exc.strerror or os.strerror(code)
    if code not in OUTPUT_ERRNOS:
        return None
    return OutputError(f"{target}: cannot write the outputs ({reason}); the previous outputs are unchanged")


def _holds_cwd(folder: Path) -> bool:
    """True when the working directory is `folder` or below it: swapping it would strand the shell."""
    try:
        here = Path(os.getcwd())
    except OSError:
        return False
    return here == folder or folder in here.parents


def _sweep(home: Path, prefix: str) -> None:
    """Remove staging folders of runs that were killed (SIGKILL, power loss) before they could."""
    for entry in os.scandir(home):
        if not entry.name.startswith(prefix) or not entry.is_dir(follow_symlinks=False):
            continue
        pid = entry.name[len(prefix):].partition("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(entry.path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purpose
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except OSError:
        return True


class Staging:
    """A run's outputs, written into `path` and swapped into `target` by publish()."""

    def __init__(self, target: str | os.PathLike) -> None:
        check_target(Path(target))
        # The folder itself: `-o link` replaces what the link points to, and
        # `-o .` has a name and a parent.
        self.shown = Path(target)  # as the user wrote it, for messages
        self.target = Path(os.path.realpath(target))
        self.inside = self.target.is_dir() and (os.path.ismount(self.target) or not is_ours(self.target)
                                                or _holds_cwd(self.target))
        home = self.target if self.inside else self.target.parent
        prefix = (STAGING_PREFIX if self.inside else f".{self.target.name}{STAGING_PREFIX}")
        try:
            home.mkdir(parents=True, exist_ok=True)
            _sweep(home, prefix)
            self.path = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=home))
        except OSError as exc:
            raise OutputError(f"{self.shown}: cannot create the output folder "
                              f"({exc.strerror or exc})") from None
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.path, 0o777 & ~umask)  # mkdtemp makes 0700; reports are meant to be shared

    def publish(self) -> None:
        """Put the staged set in place of the target's (see the module comment)."""
        if self.inside:
            self._move_in()
        elif not self.target.exists():
            os.rename(self.path, self.target)
        else:
            os.chmod(self.path, self.target.stat().st_mode & 0o7777)
            if _exchange(self.path, self.target):
                shutil.rmtree(self.path, ignore_errors=True)  # now the old set
            else:
                old = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.old-", dir=self.target.parent))
                os.rename(self.target, old / "set")
                os.rename(self.path, self.target)
                shutil.rmtree(old, ignore_errors=True)

    def _move_in(self) -> None:
        new = {p.name for p in self.path.iterdir() if p.is_file()}
        for name in OUTPUT_NAMES - new:
            (self.target / name).unlink(missing_ok=True)  # stale: this run did not write it
        for name in sorted(new - {MANIFEST}) + ([MANIFEST] if MANIFEST in new else []):
            os.replace(self.path / name, self.target / name)
        shutil.rmtree(self.path, ignore_errors=True)

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
