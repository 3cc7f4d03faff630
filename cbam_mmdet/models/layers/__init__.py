from .cbam import (CBAM, IMPLS, ChannelGate, SpatialGate, get_impl, record_choices, set_impl,
                   use_impl)

__all__ = [
    'CBAM', 'ChannelGate', 'SpatialGate', 'IMPLS', 'get_impl', 'record_choices', 'set_impl',
    'use_impl'
]
