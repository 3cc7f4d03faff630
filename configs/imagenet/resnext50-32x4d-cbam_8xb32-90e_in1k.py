# resnext50-32x4d_8xb32-90e_in1k.py with CBAM in every block (paper Table 4: ResNeXt50 (32x4d) +
# CBAM). Nothing else differs.
_base_ = './resnext50-32x4d_8xb32-90e_in1k.py'

model = dict(backbone=dict(type='CBAMResNeXt'))
