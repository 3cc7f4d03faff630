# Faster R-CNN ResNet-50 C4 (RPN and RoI pooling on stage-4 features, stage 5 as the RoI head),
# set up like the paper's Table 7 runs, which used Chen & Gupta's tf-faster-rcnn: COCO
# trainval35k / minival, 490K iterations of one image, SGD lr 0.001 divided by 10 at 350K.
# README ("Faster R-CNN on COCO") lists every remaining difference from the paper's setup.
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50-caffe_c4-1x_coco.py'
custom_imports = dict(imports=['cbam_mmdet'], allow_failed_imports=False)
custom_hooks = [dict(type='RandomStateHook')]  # exact --resume

model = dict(
    # Pytorch-style ImageNet backbones (torchvision's, the authors' CBAM) take torchvision's
    # RGB normalisation.
    data_preprocessor=dict(
        mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], bgr_to_rgb=True),
    backbone=dict(
        style='pytorch',
        init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet50')),
    # tf-faster-rcnn: anchors 64-512 px, smooth L1 with sigma 3 (RPN) and 1 (RoI head),
    # 256 RoIs per image, 300 proposals and NMS 0.3 at test time.
    rpn_head=dict(
        anchor_generator=dict(scales=[4, 8, 16, 32]),
        loss_bbox=dict(_delete_=True, type='SmoothL1Loss', beta=1.0 / 9.0, loss_weight=1.0)),
    roi_head=dict(
        shared_head=dict(
            style='pytorch',
            init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet50')),
        bbox_head=dict(
            loss_bbox=dict(_delete_=True, type='SmoothL1Loss', beta=1.0, loss_weight=1.0))),
    train_cfg=dict(rcnn=dict(sampler=dict(num=256))),
    test_cfg=dict(
        rpn=dict(nms_pre=6000, max_per_img=300),
        rcnn=dict(nms=dict(iou_threshold=0.3))))

# COCO 2017 train / val are the 2014 trainval35k / minival images under new names.
image_scale = (1000, 600)  # shorter side 600, longer side at most 1000
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(
    batch_size=1,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

max_iters = 490000
train_cfg = dict(
    _delete_=True, type='IterBasedTrainLoop', max_iters=max_iters, val_interval=70000)
optim_wrapper = dict(
    optimizer=dict(type='SGD', lr=0.001, momentum=0.9, weight_decay=0.0001),
    paramwise_cfg=dict(bias_decay_mult=0.))
param_scheduler = [
    dict(type='MultiStepLR', begin=0, end=max_iters, by_epoch=False, milestones=[350000],
         gamma=0.1)
]
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=10000, max_keep_ckpts=3))
log_processor = dict(by_epoch=False)
# One GPU, one image per iteration, as in the paper; `--auto-scale-lr` scales lr to your batch.
auto_scale_lr = dict(enable=False, base_batch_size=1)
