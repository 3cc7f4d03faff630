# resnet50_8xb32-90e_in1k.py with ResNet-101: the baseline of resnet101-cbam_8xb32-90e_in1k.py.
_base_ = './resnet50_8xb32-90e_in1k.py'

model = dict(backbone=dict(depth=101))
