# StairNet MobileNet with CBAM on each fused map, right before its detection head (paper
# Table 8). 6.01M parameters (paper: 6.00M).
_base_ = './stairnet300_mobilenetv1_250e_voc0712.py'

model = dict(neck=dict(attention=dict(type='CBAM')))
