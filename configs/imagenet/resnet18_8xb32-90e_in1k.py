# resnet50_8xb32-90e_in1k.py with ResNet-18 (basic blocks): the baseline of
# resnet18-cbam_8xb32-90e_in1k.py.
_base_ = './resnet50_8xb32-90e_in1k.py'

model = dict(backbone=dict(depth=18), head=dict(in_channels=512))
