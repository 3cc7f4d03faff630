# SSD300 VGG16 on VOC07+12 (paper Table 8, first row): mmdet's SSD300 VOC config (VOC07+12
# trainval, VOC2007 test with 11-point mAP, 300x300, SGD momentum 0.9, weight decay 5e-4, batch
# 8 x 8 GPUs, lr 1e-3 after a 500-iteration warm-up) with the paper's 250 epochs and StairNet's
# anchors ([6, 6, 6, 6, 4, 4] per location: ratios 2 and 3 on the first four levels), which give
# the paper's 26.5M parameters. The StairNet configs inherit this one.
_base_ = 'mmdet::pascal_voc/ssd300_voc0712.py'
custom_imports = dict(imports=['cbam_mmdet'], allow_failed_imports=False)

model = dict(
    bbox_head=dict(
        # SSDHead that can predict in mmdet 3.3.0 (see KernelSizeSSDHead)
        type='KernelSizeSSDHead',
        anchor_generator=dict(ratios=[[2, 3], [2, 3], [2, 3], [2, 3], [2], [2]])))

# 250 epochs: 25 epochs over the dataset repeated 10 times (mmdet's RepeatDataset). The paper
# gives no lr schedule; lr / 10 after 170 and 210 passes, mmdet's 16/20 of 24 stretched.
train_cfg = dict(max_epochs=25)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=25, by_epoch=True, milestones=[17, 21], gamma=0.1)
]
# No one-image batch: BN on the 1x1 level (MobileNet-SSD's extras, StairNet's top-down path)
# cannot train on a single value per channel.
train_dataloader = dict(batch_sampler=dict(type='AspectRatioBatchSampler', drop_last=True))
# mmdet's hooks, plus random states in checkpoints: a resumed run continues exactly.
custom_hooks = [
    dict(type='NumClassCheckHook'),
    dict(type='CheckInvalidLossHook', interval=50, priority='VERY_LOW'),
    dict(type='RandomStateHook')
]
