"""Atomic writes of files and directories: readers see the old version or the new one, never a part.

Files: `write_bytes`, `write_text` and `write_json` write into a temporary file with
a unique name in the target's directory (".NAME.XXXXXXXX.tmp"), flush and fsync it,
`os.replace` it onto the target (atomic on POSIX and Windows) and fsync the
directory, so the rename itself survives a crash. On any error the temporary file
is removed and the target is left as it was.

Directories: `staged_directory(target)` yields an empty temporary directory beside
the target; when the block succeeds every file in it and the directory itself are
fsynced and it takes the target's place. A missing target is created by a rename
that refuses to replace anything (RENAME_NOREPLACE on Linux); an existing target
is swapped with the staged directory in one atomic exchange (Linux renameat2
RENAME_EXCHANGE), after which the old content is deleted, so the target path
never disappears. Where no atomic exchange exists (other systems, or a file system
without it), the old target is first renamed aside and only deleted once the new
one is in place: it is then missing for the moment between the two renames.
On any error the staging directory is removed and the target is untouched.
"""

import contextlib
import ctypes
import errno
import json
import os
import pathlib
import shutil
import sys
import tempfile

_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _renameat2():
    """libc's renameat2 (Linux, glibc >= 2.28), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_RENAMEAT2 = _renameat2()


def _rename_with_flags(source, target, flags):
    """True when renameat2(source, target, flags) did it; False when the system or
    the file system does not support the flags; OSError for any other failure."""
    if _RENAMEAT2 is None:
        return False
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(source), None, str(target))


def fsync_directory(directory):
    """fsync a directory, so that renames inside it are durable (a no-op where
    directories cannot be opened, e.g. Windows)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_bytes(path, data):
    """Write `data` (bytes) to `path` atomically; creates missing parent directories.

    Returns the pathlib.Path written.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        pathlib.Path(temporary).unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)
    return path


def write_text(path, text, encoding="utf-8"):
    """Write `text` (str) to `path` atomically (see `write_bytes`)."""
    return write_bytes(path, text.encode(encoding))


def write_json(path, data, **dump_options):
    """Write `data` as JSON to `path` atomically; `dump_options` go to json.dumps
    (e.g. indent). Serialization happens before anything is written, so data that
    cannot be serialized raises (TypeError, ValueError) and leaves `path` as it was."""
    return write_text(path, json.dumps(data, **dump_options))


def _fsync_tree(directory):
    for root, _, files in os.walk(directory):
        for name in files:
            with open(os.path.join(root, name), "rb") as handle:
                os.fsync(handle.fileno())
        fsync_directory(root)


def publish_directory(staging, target):
    """Put the complete directory `staging` in place of `target` (see the module docstring).

    Both must be on the same file system (put staging beside target). Returns
    the pathlib.Path of target.
    """
    staging, target = pathlib.Path(staging), pathlib.Path(target)
    _fsync_tree(staging)
    if not os.path.lexists(target):
        if not _rename_with_flags(staging, target, _RENAME_NOREPLACE):
            os.rename(staging, target)
    elif _rename_with_flags(staging, target, _RENAME_EXCHANGE):
        shutil.rmtree(staging, ignore_errors=True)  # now holds the old content
    else:
        aside = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, aside / target.name)
        try:
            os.rename(staging, target)
        except BaseException:
            os.rename(aside / target.name, target)
            shutil.rmtree(aside, ignore_errors=True)
            raise
        shutil.rmtree(aside, ignore_errors=True)
    fsync_directory(target.parent)
    return target


def rename_new_directory(staging, target):
    """Rename the complete directory `staging` to `target`, which must not exist.

    Raises FileExistsError when it does: checked by the rename itself on Linux, so
    two writers racing for one name cannot both succeed; elsewhere checked just
    before the rename.
    """
    staging, target = pathlib.Path(staging), pathlib.Path(target)
    _fsync_tree(staging)
    if not _rename_with_flags(staging, target, _RENAME_NOREPLACE):
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target))
        os.rename(staging, target)
    fsync_directory(target.parent)
    return target


@contextlib.contextmanager
def staging_directory(parent, prefix):
    """Yield a new empty directory `parent/.PREFIX.XXXXXXXX.tmp` (parent created if
    missing), removed when the block ends unless it was renamed away."""
    parent = pathlib.Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{prefix}.", suffix=".tmp", dir=parent))
    try:
        yield staging
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def staged_directory(target):
    """Yield an empty staging directory that takes the place of `target` when the
    block succeeds (`publish_directory`); on an exception the staging directory is
    removed and `target` is left as it was."""
    target = pathlib.Path(target)
    with staging_directory(target.parent, target.name) as staging:
        yield staging
        publish_directory(staging, target)
