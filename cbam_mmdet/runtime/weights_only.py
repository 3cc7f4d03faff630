"""Let torch >= 2.6 load the checkpoints mmengine's Runner writes, with ``weights_only`` kept on.

Since torch 2.6, ``torch.load`` defaults to ``weights_only=True``: its unpickler only rebuilds
allow-listed globals, so a hostile pickle cannot run code. mmengine 0.10.7 calls ``torch.load``
without the argument, and its Runner checkpoints (``--resume``, testing a trained model) hold
globals outside torch's default list, all from the message hub's ``HistoryBuffer``s: the class,
the numpy arrays, dtypes (and their numeric dtype classes) and scalars it stores, and its
statistics methods, which pickle writes as ``getattr(HistoryBuffer, 'mean')``. We allow exactly
those. ``getattr`` itself stays forbidden: the name ``builtins.getattr`` maps to
:func:`history_buffer_method`, which only returns HistoryBuffer's own statistics methods and
refuses anything else. The RNG states of ``RandomStateHook`` need nothing more.
"""
import pickle
from typing import List

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

# numpy 2 moved ``numpy.core`` to ``numpy._core``; a checkpoint names whichever numpy wrote it.
_NUMPY_CORE_MODULES = ('numpy._core.multiarray', 'numpy.core.multiarray')
_HISTORY_BUFFER_METHODS = ('min', 'max', 'current', 'mean')
# Unpickling a dtype restores its state on an instance of its class (numpy.dtypes.Float64DType,
# ...), which torch only allows for listed types: the numeric dtypes a log or counter can have.
NUMERIC_DTYPE_CLASSES = tuple(
    type(np.dtype(t)) for t in (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8,
                                np.uint16, np.uint32, np.uint64, np.float16, np.float32,
                                np.float64))


def history_buffer_method(owner, name: str):
    """The only ``getattr`` a checkpoint may call: ``HistoryBuffer``'s statistics methods."""
    if owner is not HistoryBuffer or name not in _HISTORY_BUFFER_METHODS:
        raise pickle.UnpicklingError(
            f'refusing getattr({owner!r}, {name!r}) in a checkpoint: only HistoryBuffer '
            f'statistics methods {_HISTORY_BUFFER_METHODS} are allowed')
    return getattr(HistoryBuffer, name)


def mmengine_checkpoint_globals() -> List:
    """Globals (or ``(global, pickled name)`` pairs) that mmengine checkpoints need."""
    core = np._core.multiarray if hasattr(np, '_core') else np.core.multiarray
    safe = [HistoryBuffer, np.ndarray, np.dtype, (history_buffer_method, 'builtins.getattr')]
    safe += NUMERIC_DTYPE_CLASSES
    for module in _NUMPY_CORE_MODULES:
        safe += [(core._reconstruct, f'{module}._reconstruct'), (core.scalar, f'{module}.scalar')]
    return safe


def allow_mmengine_checkpoints() -> None:
    """Add :func:`mmengine_checkpoint_globals` to torch's ``weights_only`` allow-list."""
    add_safe_globals = getattr(torch.serialization, 'add_safe_globals', None)
    if add_safe_globals is not None:  # torch < 2.4 has no allow-list (nor weights_only default)
        add_safe_globals(mmengine_checkpoint_globals())
