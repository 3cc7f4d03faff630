# MobileNet-SSD300 on VOC07+12 (paper Table 8): the public Caffe MobileNet-SSD's network on the
# training setup of ssd300_vgg16_250e_voc0712.py. MobileNet v1 sources conv11 (19x19x512) and
# conv13 (10x10x1024); extras 1x1 256/128/128/64 -> 3x3 stride 2 to 512/256/256/128 (BN + ReLU);
# 1x1 predictors; 3 anchors on conv11 (size 60, no max size), 6 on the others. 5.80M parameters.
#
# The backbone starts from ImageNet weights read from checkpoints/mobilenetv1_imagenet.pth or
# from the path in the environment variable MOBILENETV1_CHECKPOINT: a state dict (or a dict with
# 'state_dict') with MobileNetV1's key names (see its docstring: conv0.conv.weight, ...,
# conv13.pointwise_conv.bn.running_var), trained on RGB input normalised like torchvision's
# (mean 123.675/116.28/103.53, std 58.395/57.12/57.375); mmdet and mmpretrain ship none.
_base_ = './ssd300_vgg16_250e_voc0712.py'

mobilenetv1_checkpoint = '{{$MOBILENETV1_CHECKPOINT:checkpoints/mobilenetv1_imagenet.pth}}'
model = dict(
    data_preprocessor=dict(std=[58.395, 57.12, 57.375]),
    backbone=dict(
        _delete_=True,
        type='MobileNetV1',
        out_indices=(11, 13),
        init_cfg=dict(type='Pretrained', checkpoint=mobilenetv1_checkpoint)),
    neck=dict(
        out_channels=(512, 1024, 512, 256, 256, 128),
        level_strides=(2, 2, 2, 2),
        level_paddings=(1, 1, 1, 1),
        l2_norm_scale=None,
        norm_cfg=dict(type='BN')),
    bbox_head=dict(
        in_channels=(512, 1024, 512, 256, 256, 128),
        kernel_size=1,
        anchor_generator=dict(
            _delete_=True,
            type='MobileNetSSDAnchorGenerator',
            strides=[16, 30, 60, 100, 150, 300],
            ratios=[[2], [2, 3], [2, 3], [2, 3], [2, 3], [2, 3]],
            min_sizes=[60, 105, 150, 195, 240, 285],
            max_sizes=[None, 150, 195, 240, 285, 300])))
