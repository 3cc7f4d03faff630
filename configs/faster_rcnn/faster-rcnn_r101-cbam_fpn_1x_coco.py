# faster-rcnn_r101_fpn_1x_coco.py with a CBAM ResNet-101. No ImageNet ResNet-101 + CBAM weights
# exist: it starts from torchvision's ResNet-101 with start_from_parent=True (README).
_base_ = './faster-rcnn_r101_fpn_1x_coco.py'

model = dict(backbone=dict(type='CBAMResNet', start_from_parent=True))
