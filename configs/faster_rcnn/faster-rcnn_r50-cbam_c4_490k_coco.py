# faster-rcnn_r50_c4_490k_coco.py with CBAM in all 16 blocks: 13 in the backbone's stages 1-3 and
# 3 in the stage-5 RoI head. Both start from the authors' ImageNet ResNet-50 + CBAM, converted
# once with tools/convert_official_cbam.py to the path below (or set CBAM_R50_CHECKPOINT).
_base_ = './faster-rcnn_r50_c4_490k_coco.py'

cbam_r50_checkpoint = '{{$CBAM_R50_CHECKPOINT:checkpoints/cbam_r50_backbone.pth}}'
model = dict(
    backbone=dict(
        type='CBAMResNet',
        init_cfg=dict(type='Pretrained', checkpoint=cbam_r50_checkpoint)),
    roi_head=dict(
        shared_head=dict(
            type='CBAMResLayer',
            init_cfg=dict(type='Pretrained', checkpoint=cbam_r50_checkpoint))))
