# Faster R-CNN ResNet-18 FPN trained from scratch on the built-in synthetic dataset
# (`python tools/make_synthetic_dataset.py data/synthetic`): the baseline half of `make demo`,
# sized to train on 2 CPU cores in minutes (the 256 px images resized to 192 px, 128-channel FPN,
# batch 4, 64 RoIs per image, 200 iterations): about 5 min per detector on an AVX2-only CPU.
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['cbam_mmdet'], allow_failed_imports=False)
custom_hooks = [dict(type='RandomStateHook')]  # exact --resume

data_root = 'data/synthetic/coco/'
metainfo = dict(classes=('circle', 'square', 'triangle'))
fpn_channels = 128
image_scale = (192, 192)  # the synthetic images (256 px) scaled by 0.75: objects of 23 to 86 px
max_iters = 200
warmup_iters = 30

model = dict(
    # From scratch: no ImageNet weights, every BN trains.
    backbone=dict(depth=18, frozen_stages=-1, norm_eval=False, init_cfg=None),
    neck=dict(in_channels=[64, 128, 256, 512], out_channels=fpn_channels),
    rpn_head=dict(in_channels=fpn_channels, feat_channels=fpn_channels),
    # RoIAlign's backward is a third of a CPU step: fixed 2x2 samples per bin, 64 RoIs per image.
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=fpn_channels, roi_layer=dict(sampling_ratio=2)),
        bbox_head=dict(in_channels=fpn_channels, fc_out_channels=512, num_classes=3)),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=500, max_per_img=250), rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=300)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(
    batch_size=4,
    num_workers=1,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4,
    num_workers=1,
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator

train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters,
                 val_interval=max_iters)
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05),
    clip_grad=dict(max_norm=10.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=warmup_iters),
    dict(type='CosineAnnealingLR', T_max=max_iters - warmup_iters, eta_min=1e-5,
         by_epoch=False, begin=warmup_iters, end=max_iters)
]
default_hooks = dict(
    logger=dict(interval=20),
    checkpoint=dict(by_epoch=False, interval=100, max_keep_ckpts=2))
log_processor = dict(by_epoch=False)
auto_scale_lr = dict(enable=False, base_batch_size=4)
randomness = dict(seed=0)  # the demo's numbers are reproducible run to run
