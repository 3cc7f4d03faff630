"""cbam_mmdet: CBAM (Woo et al., ECCV 2018) for MMDetection 3.x.

Importing the package registers every component in mmdet's ``MODELS`` registry, so a config needs
only ``custom_imports = dict(imports=['cbam_mmdet'], allow_failed_imports=False)``, lets
torch >= 2.6 load mmengine's own checkpoints with ``weights_only`` protection kept on, and makes
mmengine's local file writes (checkpoints) atomic.
"""
from .utils import allow_mmengine_checkpoints, use_atomic_local_writes
from .version import __version__

allow_mmengine_checkpoints()
use_atomic_local_writes()

from . import engine, models  # noqa: E402,F401 - registers the components

__all__ = ['__version__']
