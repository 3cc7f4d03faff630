# resnet34_8xb32-90e_in1k.py with CBAM in every block (paper Table 4: ResNet34 + CBAM). Nothing
# else differs.
_base_ = './resnet34_8xb32-90e_in1k.py'

model = dict(backbone=dict(type='CBAMResNet'))
