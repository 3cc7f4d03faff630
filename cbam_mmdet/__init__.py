"""cbam_mmdet: CBAM (Woo et al., ECCV 2018) for MMDetection 3.x.

Importing the package registers every component in mmdet's ``MODELS`` registry, so a config needs
only ``custom_imports = dict(imports=['cbam_mmdet'], allow_failed_imports=False)``, lets
torch >= 2.6 load mmengine's own checkpoints with ``weights_only`` protection kept on, and makes
mmengine's local file writes (checkpoints) atomic.

All three happen in one place: :mod:`cbam_mmdet.runtime.import_effects`.
"""
from .runtime.import_effects import apply_import_effects
from .version import __version__

apply_import_effects()

__all__ = ['__version__']
