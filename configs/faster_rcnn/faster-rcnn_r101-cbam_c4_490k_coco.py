# faster-rcnn_r101_c4_490k_coco.py with CBAM in all 33 blocks (30 in the backbone, 3 in the RoI
# head). No public ImageNet ResNet-101 + CBAM weights exist: by default it starts from
# torchvision's ResNet-101 with start_from_parent=True, i.e. as exactly the plain network, each
# CBAM gate at 0.5 (README). Set CBAM_R101_CHECKPOINT to your own CBAM ResNet-101 classifier
# (trained with configs/imagenet/resnet101-cbam_8xb32-90e_in1k.py, docs/pretraining.md) to start
# both from its backbone.* weights, CBAM included, as the paper did (Table 7's R101 + CBAM row).
_base_ = './faster-rcnn_r101_c4_490k_coco.py'

cbam_r101_checkpoint = '{{$CBAM_R101_CHECKPOINT:torchvision://resnet101}}'
from_classifier = cbam_r101_checkpoint != 'torchvision://resnet101'
imagenet_init = dict(
    type='Pretrained',
    checkpoint=cbam_r101_checkpoint,
    prefix='backbone.' if from_classifier else None)
model = dict(
    backbone=dict(
        type='CBAMResNet', start_from_parent=not from_classifier, init_cfg=imagenet_init),
    roi_head=dict(
        shared_head=dict(
            type='CBAMResLayer', start_from_parent=not from_classifier,
            init_cfg=imagenet_init)))
