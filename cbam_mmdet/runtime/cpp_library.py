"""Compile a small C++ source once per machine and load it with ctypes.

The library is built on first use with the system's C++ compiler (``$CXX``, else ``c++``/``g++``)
into a cache directory (``$CBAM_MMDET_CACHE``, else ``$XDG_CACHE_HOME/cbam_mmdet``, else
``~/.cache/cbam_mmdet``), named after a hash of the source, the compiler, the flags and the CPU,
so a changed source or another machine builds its own copy. Building takes about 4 s; it is
written to a temporary file and renamed, so concurrent processes (distributed training) and
interruptions never leave a half-written library. Without a working compiler the caller gets
None and one warning naming the reason and the fix.

Not ``torch.utils.cpp_extension.load``: it compiles against torch's C++ headers (about a minute
on 2 cores, on the first training step) and needs ninja; these kernels take raw pointers
through ctypes and need only a compiler with OpenMP.
"""
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Optional, Sequence

import torch  # noqa: F401  (loads torch's libgomp first, so the library shares its OpenMP threads)

CXX_FLAGS = ('-O3', '-march=native', '-fopenmp', '-ffp-contract=off', '-std=c++17', '-shared',
             '-fPIC')


def cache_dir() -> Path:
    if os.environ.get('CBAM_MMDET_CACHE'):
        return Path(os.environ['CBAM_MMDET_CACHE'])
    base = os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache'
    return Path(base) / 'cbam_mmdet'


def find_compiler() -> Optional[str]:
    for name in (os.environ.get('CXX'), 'c++', 'g++', 'clang++'):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_signature() -> str:
    """What ``-march=native`` depends on: the CPU model and its feature flags."""
    try:
        lines = Path('/proc/cpuinfo').read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    wanted = [line for line in lines if line.startswith(('model name', 'flags', 'Features'))]
    return '\n'.join(sorted(set(wanted))) or platform.machine()


def _compiler_version(compiler: str) -> str:
    result = subprocess.run([compiler, '--version'], capture_output=True, text=True, timeout=60)
    return result.stdout


class CppBuildError(RuntimeError):
    """The C++ source could not be compiled or loaded."""


def build_library(source: Path, name: str, flags: Sequence[str] = CXX_FLAGS) -> Path:
    """Path of the compiled ``source``, building it if the cache has no copy.

    Raises:
        CppBuildError: no compiler, or the compiler failed (its last output lines included).
    """
    compiler = find_compiler()
    if compiler is None:
        raise CppBuildError('no C++ compiler found (looked for $CXX, c++, g++, clang++); '
                            'install one (e.g. the g++ package) or set CXX')
    key = hashlib.sha256()
    for part in (source.read_bytes(), compiler.encode(), _compiler_version(compiler).encode(),
                 ' '.join(flags).encode(), _cpu_signature().encode(), torch.__version__.encode()):
        key.update(part)
        key.update(b'\0')
    target = cache_dir() / f'{name}-{key.hexdigest()[:16]}.so'
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f'.{name}-', suffix='.so', dir=target.parent)
    os.close(fd)
    try:
        result = subprocess.run([compiler, *flags, str(source), '-o', temporary],
                                capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            output = '\n'.join((result.stderr or result.stdout).splitlines()[-15:])
            raise CppBuildError(f'{compiler} failed to compile {source}:\n{output}')
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return target


def load_library(source: Path, name: str, purpose: str) -> Optional[ctypes.CDLL]:
    """Build (if needed) and load ``source``; on failure warn once and return None.

    Args:
        source (Path): The C++ file, exporting ``extern "C"`` functions.
        name (str): Library name, the cache file's prefix.
        purpose (str): What the caller falls back to, for the warning.
    """
    try:
        return ctypes.CDLL(str(build_library(source, name)))
    except (CppBuildError, OSError, subprocess.SubprocessError) as error:
        warnings.warn(f'cbam_mmdet: the C++ kernels ({name}) are not available, {purpose}. '
                      f'Reason: {error}', RuntimeWarning, stacklevel=3)
        return None
