"""Old path of :mod:`cbam_mmdet.runtime.cpp_library`: the same module object under both names,
so patching one patches the other."""
import sys

from ..runtime import cpp_library

sys.modules[__name__] = cpp_library
