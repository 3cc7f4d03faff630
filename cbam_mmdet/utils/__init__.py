from .atomic_files import AtomicLocalBackend, use_atomic_local_writes, write_atomic
from .safe_checkpoint import allow_mmengine_checkpoints, mmengine_checkpoint_globals

__all__ = [
    'AtomicLocalBackend', 'allow_mmengine_checkpoints', 'mmengine_checkpoint_globals',
    'use_atomic_local_writes', 'write_atomic'
]
