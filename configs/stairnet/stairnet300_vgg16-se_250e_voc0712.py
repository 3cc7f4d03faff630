# StairNet VGG16 with SE (channel attention from average pooling, r = 16) on each fused map,
# right before its detection head (paper Table 8). 32.1M parameters.
_base_ = './stairnet300_vgg16_250e_voc0712.py'

model = dict(neck=dict(attention=dict(type='CBAM', arrangement='channel', pool_types=('avg', ))))
