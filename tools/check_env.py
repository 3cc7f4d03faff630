"""Prove that the environment runs what cbam_mmdet needs; exit 1 with the fix when it does not.

`make env` runs this last and only marks the environment ready when it passes.
"""
import os
import sys


def _fail(problem: str, fix: str) -> None:
    print(f'check_env: FAILED: {problem}\n  fix: {fix}', file=sys.stderr)
    sys.exit(1)


def main() -> None:
    import torch
    try:
        import torchvision
        from torchvision.ops import nms as tv_nms
        boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.]])
        tv_nms(boxes, torch.tensor([0.9, 0.8]), 0.5)
    except Exception as err:  # noqa: BLE001 - any failure here means the same fix
        _fail(f'torchvision ops do not run ({err!r})',
              'install the torch build that matches torchvision '
              '(requirements/env.txt: torch===2.13.0)')

    try:
        import mmcv
        from mmcv.ops import RoIAlign, nms
    except ImportError as err:
        _fail(f'mmcv was installed without its compiled C++ ops ({err})',
              'rebuild it: `.venv/bin/pip uninstall -y mmcv; .venv/bin/pip cache remove mmcv; '
              'make env` (mmcv skips its ops silently when torch is not importable while it '
              'builds)')
    dets, keep = nms(boxes, torch.tensor([0.9, 0.8]), iou_threshold=0.5)
    rois = torch.tensor([[0., 0., 0., 7., 7.]])
    pooled = RoIAlign((2, 2), spatial_scale=1.0, sampling_ratio=2)(torch.rand(1, 3, 8, 8), rois)
    if keep.tolist() != [0] or pooled.shape != (1, 3, 2, 2):
        _fail('mmcv ops returned wrong results', 'rebuild mmcv as above')

    import mmengine

    import cbam_mmdet  # noqa: F401 - registers the components, applies the torch compatibility
    import mmdet
    mmpretrain = check_classifier()
    print(f'check_env: OK  torch {torch.__version__}, torchvision {torchvision.__version__}, '
          f'mmcv {mmcv.__version__} (ops), mmengine {mmengine.__version__}, '
          f'mmdet {mmdet.__version__}, mmpretrain {mmpretrain.__version__}')


def check_classifier():
    """Build and run the ResNet-18 + CBAM ImageNet classifier of configs/imagenet/ (mmpretrain's
    ImageClassifier around our backbone); return the mmpretrain module."""
    import torch
    fix = 'make env (requirements/env.txt pins mmpretrain and what it needs)'
    try:
        import mmpretrain
        import mmpretrain.models  # noqa: F401 - imports torchvision's compiled ops
    except Exception as err:  # noqa: BLE001 - any failure here means the same fix
        _fail(f'mmpretrain does not import ({err!r})', fix)
    from mmengine.config import Config
    from mmpretrain.registry import MODELS
    config = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          'configs', 'imagenet', 'resnet18-cbam_8xb32-90e_in1k.py')
    try:
        classifier = MODELS.build(Config.fromfile(config).model).eval()
        with torch.no_grad():
            logits = classifier(torch.rand(1, 3, 32, 32), mode='tensor')
    except Exception as err:  # noqa: BLE001 - report whatever broke
        _fail(f'the ImageNet classifier of {config} does not build or run ({err!r})', fix)
    if logits.shape != (1, 1000):
        _fail(f'the ImageNet classifier returned logits of shape {tuple(logits.shape)}', fix)
    return mmpretrain


if __name__ == '__main__':
    main()
