# StairNet (SSD300 VGG16 + top-down semantic aggregation) on VOC07+12, paper Table 8: the SSD
# config with its neck replaced by StairNetNeck (SSD's extras, then lateral 1x1 + BN to 256,
# 3x3 transposed conv + BN upsampling, sum fusion, 3x3 conv + BN + ReLU), whose six 256-channel
# maps feed the heads. 32.0M parameters.
_base_ = '../ssd/ssd300_vgg16_250e_voc0712.py'

model = dict(
    neck=dict(type='StairNetNeck', feat_channels=256),
    bbox_head=dict(in_channels=(256, 256, 256, 256, 256, 256)))
