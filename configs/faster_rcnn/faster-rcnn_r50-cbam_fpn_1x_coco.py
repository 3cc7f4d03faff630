# faster-rcnn_r50_fpn_1x_coco.py with a CBAM ResNet-50, started from the authors' ImageNet
# weights converted once with tools/convert_official_cbam.py to the path below (or set
# CBAM_R50_CHECKPOINT).
_base_ = './faster-rcnn_r50_fpn_1x_coco.py'

cbam_r50_checkpoint = '{{$CBAM_R50_CHECKPOINT:checkpoints/cbam_r50_backbone.pth}}'
model = dict(
    backbone=dict(
        type='CBAMResNet',
        init_cfg=dict(type='Pretrained', checkpoint=cbam_r50_checkpoint)))
