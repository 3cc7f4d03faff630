# faster-rcnn_r101_c4_490k_coco.py with CBAM in all 33 blocks (30 in the backbone, 3 in the RoI
# head). No ImageNet ResNet-101 + CBAM weights exist: it starts from torchvision's ResNet-101 with
# start_from_parent=True, i.e. as exactly the plain network, each CBAM gate at 0.5 (README).
_base_ = './faster-rcnn_r101_c4_490k_coco.py'

model = dict(
    backbone=dict(type='CBAMResNet', start_from_parent=True),
    roi_head=dict(shared_head=dict(type='CBAMResLayer', start_from_parent=True)))
