from .cbam_resnet import CBAMBasicBlock, CBAMResNet, CBAMResNetV1d
from .cbam_resnext import CBAMResNeXt

__all__ = ['CBAMBasicBlock', 'CBAMResNet', 'CBAMResNetV1d', 'CBAMResNeXt']
