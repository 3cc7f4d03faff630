# resnet101_8xb32-90e_in1k.py with CBAM in every block (paper Table 4: ResNet101 + CBAM). Nothing
# else differs.
_base_ = './resnet101_8xb32-90e_in1k.py'

model = dict(backbone=dict(type='CBAMResNet'))
