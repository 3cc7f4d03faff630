from .cbam_res_layer import CBAMResLayer

__all__ = ['CBAMResLayer']
