"""CBAM (``module.py``) and its implementations: the eager ops, one fused autograd function of
PyTorch ops (``torch_impl.py``) and C++ kernels (``cpp_impl.py``), chosen by ``dispatch.py``."""
from .dispatch import IMPLS, get_impl, record_choices, set_impl, use_impl
from .module import (ARRANGEMENTS, AUTHORS_SPATIAL_NORM, CBAM, CHANNEL_POOL_TYPES,
                     SPATIAL_DESCRIPTORS, ChannelGate, SpatialGate)

__all__ = [
    'ARRANGEMENTS', 'AUTHORS_SPATIAL_NORM', 'CBAM', 'CHANNEL_POOL_TYPES', 'IMPLS',
    'SPATIAL_DESCRIPTORS', 'ChannelGate', 'SpatialGate', 'get_impl', 'record_choices',
    'set_impl', 'use_impl'
]
