"""Posterior directories written atomically: staged in a temporary sibling, renamed into place."""

import contextlib
import os
import pathlib
import shutil
import tempfile


@contextlib.contextmanager
def staged_directory(directory):
    """Yield an empty staging directory that replaces `directory` when the block succeeds.

    On any exception the staging directory is removed and `directory` is left as it was.
    """
    directory = pathlib.Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        yield staging
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
