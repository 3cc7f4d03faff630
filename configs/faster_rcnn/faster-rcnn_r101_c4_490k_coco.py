# faster-rcnn_r50_c4_490k_coco.py with ResNet-101.
_base_ = './faster-rcnn_r50_c4_490k_coco.py'

model = dict(
    backbone=dict(
        depth=101,
        init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet101')),
    roi_head=dict(
        shared_head=dict(
            depth=101,
            init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet101'))))
