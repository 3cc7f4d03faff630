# resnext50-32x4d_8xb32-90e_in1k.py with depth 101: the baseline of
# resnext101-32x4d-cbam_8xb32-90e_in1k.py.
_base_ = './resnext50-32x4d_8xb32-90e_in1k.py'

model = dict(backbone=dict(depth=101))
