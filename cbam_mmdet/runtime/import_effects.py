"""Everything ``import cbam_mmdet`` does to the process, in one place.

mmdet's own tools (and ours) rely on these effects once a config names ``cbam_mmdet`` in
``custom_imports``:

1. torch >= 2.6 loads mmengine's Runner checkpoints with ``weights_only`` kept on
   (:func:`.weights_only.allow_mmengine_checkpoints`);
2. mmengine's local file writes (checkpoints, ``last_checkpoint``) become atomic
   (:func:`.atomic_files.use_atomic_local_writes`);
3. every component is registered in mmdet's registries (importing ``cbam_mmdet.models`` and
   ``cbam_mmdet.engine``).
"""
import importlib

from .atomic_files import use_atomic_local_writes
from .weights_only import allow_mmengine_checkpoints

REGISTERING_PACKAGES = ('cbam_mmdet.engine', 'cbam_mmdet.models')


def apply_import_effects() -> None:
    """Apply the three effects above; safe to call more than once."""
    allow_mmengine_checkpoints()
    use_atomic_local_writes()
    for package in REGISTERING_PACKAGES:
        importlib.import_module(package)
