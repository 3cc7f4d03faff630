from .mobilenet_ssd_anchor_generator import MobileNetSSDAnchorGenerator

__all__ = ['MobileNetSSDAnchorGenerator']
