# mmdet's Faster R-CNN R101-FPN 1x with the plugin loaded: the baseline of
# faster-rcnn_r101-cbam_fpn_1x_coco.py.
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r101_fpn_1x_coco.py'
custom_imports = dict(imports=['cbam_mmdet'], allow_failed_imports=False)
# Random states in checkpoints: a resumed run continues exactly as an uninterrupted one.
custom_hooks = [dict(type='RandomStateHook')]
