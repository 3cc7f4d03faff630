"""Old path of :mod:`cbam_mmdet.runtime.memory`, kept importable (the same module object)."""
import sys

from ..runtime import memory

sys.modules[__name__] = memory
