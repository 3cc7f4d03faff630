# resnet50_8xb32-90e_in1k.py with ResNeXt-50 (32x4d): mmdet's ResNeXt, 32 groups of width 4 in
# the first stage. The baseline of resnext50-32x4d-cbam_8xb32-90e_in1k.py.
_base_ = './resnet50_8xb32-90e_in1k.py'

model = dict(backbone=dict(type='ResNeXt', groups=32, base_width=4))
