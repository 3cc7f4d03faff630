# faster-rcnn_r18_fpn_200i_synthetic.py with CBAM in every block of the ResNet-18: the CBAM half
# of `make demo`. Nothing else differs.
_base_ = './faster-rcnn_r18_fpn_200i_synthetic.py'

model = dict(backbone=dict(type='CBAMResNet'))
