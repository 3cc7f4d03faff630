# faster-rcnn_r101_fpn_1x_coco.py with a CBAM ResNet-101. No public ImageNet ResNet-101 + CBAM
# weights exist: by default it starts from torchvision's ResNet-101 with start_from_parent=True
# (README). Set CBAM_R101_CHECKPOINT to your own CBAM ResNet-101 classifier (trained with
# configs/imagenet/resnet101-cbam_8xb32-90e_in1k.py, docs/pretraining.md) to start from its
# backbone.* weights, CBAM included, as the paper did.
_base_ = './faster-rcnn_r101_fpn_1x_coco.py'

cbam_r101_checkpoint = '{{$CBAM_R101_CHECKPOINT:torchvision://resnet101}}'
from_classifier = cbam_r101_checkpoint != 'torchvision://resnet101'
model = dict(
    backbone=dict(
        type='CBAMResNet',
        start_from_parent=not from_classifier,
        init_cfg=dict(
            type='Pretrained',
            checkpoint=cbam_r101_checkpoint,
            prefix='backbone.' if from_classifier else None)))
