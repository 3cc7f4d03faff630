"""Files that are complete or absent: atomic local writes, for our tools and mmengine's Runner.

mmengine writes checkpoints and the ``last_checkpoint`` pointer through its local file backend,
which opens the destination and writes into it: a run killed mid-write leaves a truncated
checkpoint that ``--resume`` then fails on. ``import cbam_mmdet`` registers
:class:`AtomicLocalBackend` instead, which writes beside the destination, flushes to disk and
renames over it, so a kill leaves the previous version in place.
"""
import os
import os.path as osp
import tempfile
from pathlib import Path
from typing import Union

from mmengine.fileio.backends import LocalBackend, register_backend

_UMASK = os.umask(0)
os.umask(_UMASK)


def write_atomic(filepath: Union[str, Path], data: bytes) -> None:
    """Write ``data`` to ``filepath`` through a renamed temporary file (created dirs included)."""
    folder = osp.dirname(osp.abspath(filepath))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.tmp-', dir=folder)
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, filepath)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise


class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend with atomic ``put`` and ``put_text``."""

    def put(self, obj: bytes, filepath: Union[str, Path]) -> None:
        write_atomic(filepath, obj)

    def put_text(self, obj: str, filepath: Union[str, Path], encoding: str = 'utf-8') -> None:
        write_atomic(filepath, obj.encode(encoding))


def use_atomic_local_writes() -> None:
    """Make :class:`AtomicLocalBackend` the backend mmengine picks for local paths."""
    register_backend('local', AtomicLocalBackend, force=True, prefixes='')
