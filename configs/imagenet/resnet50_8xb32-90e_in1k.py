# ResNet-50 on ImageNet-1k with the authors' recipe (paper Sect. 4.1, their train_imagenet.py):
# batch 256 (8 GPUs x 32), SGD lr 0.1, momentum 0.9, weight decay 1e-4 on every parameter, lr / 10
# every 30 epochs, 90 epochs; torchvision's transforms (PIL decoding and bilinear resizing,
# RandomResizedCrop 224 + horizontal flip; test: short side 256, centre crop 224) and RGB
# normalisation. mmpretrain's own ResNet-50 config is the same recipe over 100 epochs with OpenCV
# decoding and resizing. The root of every config in this folder (docs/pretraining.md).
_base_ = 'mmpretrain::resnet/resnet50_8xb32_in1k.py'
custom_imports = dict(imports=['cbam_mmdet'], allow_failed_imports=False)

model = dict(
    # The backbone is mmdet's ResNet, the class of the detection configs, so a classifier's
    # backbone.* weights are exactly a detection backbone's. It lives in mmdet's registry:
    # `_scope_` builds it (and the modules it builds, CBAM included) in mmdet's scope.
    backbone=dict(
        _delete_=True,
        type='ResNet',
        _scope_='mmdet',
        depth=50,
        out_indices=(3, ),
        style='pytorch',
        norm_eval=False,  # mmdet's default freezes BN statistics, for detection fine-tuning
        zero_init_residual=False),  # the authors initialise every block's last BN to 1
    # The authors' fc init: Kaiming-normal (fan_in) weights, zero bias.
    head=dict(init_cfg=dict(type='Kaiming', layer='Linear', mode='fan_in', bias=0)))

train_pipeline = [
    dict(type='LoadImageFromFile', imdecode_backend='pillow'),
    dict(type='RandomResizedCrop', scale=224, backend='pillow', interpolation='bilinear'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', imdecode_backend='pillow'),
    dict(type='ResizeEdge', scale=256, edge='short', backend='pillow', interpolation='bilinear'),
    dict(type='CenterCrop', crop_size=224),
    dict(type='PackInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

param_scheduler = dict(milestones=[30, 60])  # lr * 0.1 ** (epoch // 30)
train_cfg = dict(max_epochs=90)

# Random states in checkpoints: a resumed run continues exactly as an uninterrupted one.
custom_hooks = [dict(type='RandomStateHook', _scope_='mmdet')]
default_hooks = dict(checkpoint=dict(max_keep_ckpts=3))
# The authors' seed (train_imagenet.py --seed 1234).
randomness = dict(seed=1234)
