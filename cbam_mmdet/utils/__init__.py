"""Old home of the runtime helpers, kept importable: they live in :mod:`cbam_mmdet.runtime`."""
from ..runtime.atomic_files import AtomicLocalBackend, use_atomic_local_writes, write_atomic
from ..runtime.weights_only import allow_mmengine_checkpoints, mmengine_checkpoint_globals

__all__ = [
    'AtomicLocalBackend', 'allow_mmengine_checkpoints', 'mmengine_checkpoint_globals',
    'use_atomic_local_writes', 'write_atomic'
]
