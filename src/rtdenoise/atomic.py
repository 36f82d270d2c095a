"""All-or-nothing file writes, for every file rtdenoise writes (recordings, checkpoints,
ONNX exports, TensorRT plans, training state)."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_path", "BlockWriter"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, fsync: bool = True) -> Iterator[Path]:
    """Write a file all-or-nothing: yield a temporary path, then rename it to `path`.

    The temporary file lives in the destination's directory (so the final
    :func:`os.replace` is atomic), is hidden (leading dot) and ends with the
    destination's own suffix (``.rec.k3j9x2.tmp.npz`` for ``rec.npz``), so libraries that
    add or check an extension leave its name alone. It already exists, empty: the writer
    must open it for writing (truncating), not exclusively create it. On success it
    replaces `path`; if the body raises, it is removed and `path` is left as it was.

    Parameters
    ----------
    path : str or path-like
        The final destination. Its directory must exist.
    fsync : bool, default True
        Flush the data and the directory entry to disk, so that power loss also never
        leaves a partial file under the final name.

    Yields
    ------
    pathlib.Path
        The temporary path to write to.

    Raises
    ------
    FileNotFoundError
        If the destination's directory does not exist.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> with tempfile.TemporaryDirectory() as d:
    ...     dest = os.path.join(d, "out.npz")
    ...     with atomic_path(dest) as tmp:
    ...         np.savez(tmp, x=np.arange(3))
    ...     np.load(dest)["x"].tolist()
    [0, 1, 2]
    """
    path = Path(os.fspath(path))
    directory = path.parent
    if not directory.is_dir():
        raise FileNotFoundError(
            errno.ENOENT, "the output directory does not exist; create it first", str(directory)
        )
    # O_EXCL reserves the name; mode 0o666 lets the umask decide, as a plain open() would.
    while True:
        tmp = directory / f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:  # pragma: no cover - 32 random bits collided
            continue
    try:
        yield tmp
        if path.exists():  # keep the permissions of the file being replaced
            with contextlib.suppress(OSError):
                os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if fsync and hasattr(os, "O_DIRECTORY"):  # POSIX: make the rename itself durable
        with contextlib.suppress(OSError):
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


class BlockWriter:
    """Shared by the recording writers that take consecutive blocks of frames: ``n``,
    ``frame_shape``, ``dtype`` and ``written`` are theirs; as a context manager, ``close()``
    on success and ``abort()`` on an exception."""

    n: int
    frame_shape: tuple
    dtype: object
    written: int
    path: object

    def _block(self, block):
        """``block`` in this writer's dtype, once it is checked to be the next frames."""
        import numpy as np

        block = np.asarray(block, dtype=self.dtype)
        if block.shape[1:] != self.frame_shape or self.written + len(block) > self.n:
            raise ValueError(f"block of shape {block.shape} does not fit frames {self.written}.. of "
                             f"{(self.n, *self.frame_shape)}")
        return block

    def _all_written(self) -> None:
        if self.written != self.n:
            raise RuntimeError(f"{self.path}: {self.written} of {self.n} frames written; nothing was saved")

    def close(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
