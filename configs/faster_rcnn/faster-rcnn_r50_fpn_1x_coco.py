# mmdet's Faster R-CNN R50-FPN 1x with the plugin loaded: the baseline of
# faster-rcnn_r50-cbam_fpn_1x_coco.py.
# The plugin import makes mmengine's checkpoints loadable under torch >= 2.6 (--resume, testing).
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['cbam_mmdet'], allow_failed_imports=False)
# Random states in checkpoints: a resumed run continues exactly as an uninterrupted one.
custom_hooks = [dict(type='RandomStateHook')]
