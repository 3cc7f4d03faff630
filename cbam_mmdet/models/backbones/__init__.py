from .cbam_resnet import CBAMBasicBlock, CBAMResNet, CBAMResNetV1d
from .cbam_resnext import CBAMResNeXt
from .mobilenet_v1 import MobileNetV1

__all__ = ['CBAMBasicBlock', 'CBAMResNet', 'CBAMResNetV1d', 'CBAMResNeXt', 'MobileNetV1']
