# resnet50_8xb32-90e_in1k.py with ResNet-34 (basic blocks): the baseline of
# resnet34-cbam_8xb32-90e_in1k.py.
_base_ = './resnet50_8xb32-90e_in1k.py'

model = dict(backbone=dict(depth=34), head=dict(in_channels=512))
