from .cbam import CBAM, ChannelGate, SpatialGate

__all__ = ['CBAM', 'ChannelGate', 'SpatialGate']
