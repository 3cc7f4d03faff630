# StairNet on MobileNet-SSD300, VOC07+12 (paper Table 8): the MobileNet-SSD config with
# StairNetNeck's light top-down path (use_depthwise: dense 1x1 laterals to 128 channels, depthwise
# 3x3 transposed convs, depthwise-separable 3x3 after each fusion), whose six 128-channel maps
# feed the 1x1 heads. 6.00M parameters (paper: 5.98M).
_base_ = '../ssd/ssd300_mobilenetv1_250e_voc0712.py'

model = dict(
    neck=dict(type='StairNetNeck', feat_channels=128, use_depthwise=True),
    bbox_head=dict(in_channels=(128, 128, 128, 128, 128, 128)))
