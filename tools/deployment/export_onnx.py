"""Export a detector (or its backbone) to ONNX and check it in onnxruntime against PyTorch.

    python tools/deployment/export_onnx.py CONFIG [CHECKPOINT] --out FILE [--shape H W]
        [--dynamic] [--opset N] [--part {detector,features,backbone}] [--image IMG ...]
        [--threads N] [--cfg-options KEY=VALUE ...]

Parts (``--part``):
- ``detector`` (default): the whole detector, decoding and NMS in the graph. SSD-family heads
  (SSD, StairNet, with SE or CBAM); outputs ``boxes`` (M, 4) xyxy in input pixels, ``scores``,
  ``labels``, ``batch_index``, compared with mmdet's ``predict`` (``rescale=False``).
- ``features``: backbone, neck and the dense head's raw maps (for Faster R-CNN: everything
  before the RoI stage, i.e. the RPN's objectness and deltas), compared with PyTorch.
- ``backbone``: the backbone's feature maps, compared with PyTorch.

The graph's input ``image`` is (B, 3, H, W) float32 as the config's test pipeline makes it
(resized to H x W, channel order as loaded, 0..255); the data preprocessor's channel flip and
mean / std are in the graph. ``--shape`` sets H x W (default: the test pipeline's Resize scale,
rounded up to the preprocessor's ``pad_size_divisor``). ``--dynamic`` makes the batch dynamic,
and H and W where the model allows (not SSD-family detectors: their priors and StairNet's
top-down path are laid out for one size); the check then also runs a batch of two images and,
with dynamic H and W, a second size.

The check runs the test pipeline on ``--image`` files (default: two generated pictures) and
prints the largest differences; the file is written (atomically) only when they are within
the bars of ``cbam_mmdet/deployment/parity.py``. Without CHECKPOINT the model keeps its random
initialisation, with Kaiming-normal convs (to check the export itself).
"""
import argparse
import os
import os.path as osp
import tempfile
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from mmcv.ops import RoIAlign
from mmcv.transforms import Compose
from mmengine.config import Config, DictAction
from mmengine.dataset import pseudo_collate

import cbam_mmdet  # noqa: F401 - registers the components
from cbam_mmdet.deployment import (BackboneGraph, ExportError, FeatureGraph, SSDDetectionGraph,
                                   TwoStageDetectionGraph, detection_differences, detections_match,
                                   export_onnx, onnx_session, relative_difference, run_onnx)
from cbam_mmdet.deployment.onnx_export import DEFAULT_OPSET
from cbam_mmdet.deployment.parity import BOX_RTOL, FEATURE_RTOL, SCORE_ATOL
from cbam_mmdet.runtime.checkpoints import CheckpointError, read_checkpoint
from mmdet.apis import init_detector
from mmdet.models.dense_heads import RPNHead, SSDHead
from mmdet.models.roi_heads import StandardRoIHead
from mmdet.models.roi_heads.roi_extractors import SingleRoIExtractor
from mmdet.models.task_modules.coders import DeltaXYWHBBoxCoder
from mmdet.utils import get_test_pipeline_cfg

PARTS = ('detector', 'features', 'backbone')
CHECKPOINT_SUFFIXES = ('.pth', '.pt', '.ckpt')


class Refusal(ValueError):
    """What the tool cannot export, and what to do instead."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('config', help='detector config')
    parser.add_argument('checkpoint', nargs='?', help='trained weights (.pth); default: none')
    parser.add_argument('--out', required=True, help='the .onnx file to write')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                        help="input size (default: the test pipeline's)")
    parser.add_argument('--dynamic', action='store_true',
                        help='dynamic batch (and H, W where the model allows)')
    parser.add_argument('--opset', type=int, default=DEFAULT_OPSET, help='ONNX opset')
    parser.add_argument('--part', choices=PARTS, default='detector', help='what to export')
    parser.add_argument('--image', nargs='+', default=[],
                        help='images for the check (default: two generated pictures)')
    parser.add_argument('--threads', type=int, default=0,
                        help="onnxruntime threads for the check (0: onnxruntime's default)")
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                        help='override config settings, KEY=VALUE')
    args = parser.parse_args(argv)
    if not osp.isfile(args.config):
        parser.error(f'config {args.config}: no such file')
    if args.checkpoint is not None:
        if not args.checkpoint.endswith(CHECKPOINT_SUFFIXES):
            parser.error(f'checkpoint {args.checkpoint}: expected a {"/".join(CHECKPOINT_SUFFIXES)}'
                         f' file')
        try:
            read_checkpoint(args.checkpoint, mmap=True)
        except (FileNotFoundError, CheckpointError) as err:
            parser.error(str(err))
    if not args.out.endswith('.onnx'):
        parser.error(f'--out {args.out}: the file name must end in .onnx')
    if args.shape is not None and min(args.shape) < 1:
        parser.error(f'--shape {args.shape[0]} {args.shape[1]}: sizes must be positive')
    for image in args.image:
        if not osp.isfile(image):
            parser.error(f'--image {image}: no such file')
    return args


def load_model(args) -> torch.nn.Module:
    """The detector in eval mode: the checkpoint's weights, else :func:`signal_keeping_init`."""
    cfg = Config.fromfile(args.config)
    cfg.merge_from_dict(args.cfg_options)
    torch.manual_seed(0)  # the same random model on every call without checkpoint
    model = init_detector(cfg, args.checkpoint, device='cpu')
    if args.checkpoint is None:
        signal_keeping_init(model, args)
    return model.eval()


@torch.no_grad()
def signal_keeping_init(model: torch.nn.Module, args) -> None:
    """Random weights whose features and scores keep their scale (no checkpoint given).

    With PyTorch's default init the features of deep random networks fade (MobileNet's 27
    convs), and a detector's scores become equal (uniform softmax, or a saturated sigmoid where
    residual stages grow them) over whole levels: the check would compare ties. So every conv
    gets Kaiming-normal (fan_in) weights, and the dense heads' predictors LeCun-normal weights
    divided by the RMS of their input on the check's images, and zero biases (logits of about
    unit scale).
    """
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, mode='fan_in', nonlinearity='relu')
    divisor = pad_divisor(model)
    shape = tuple(args.shape) if args.shape else pipeline_shape(
        get_test_pipeline_cfg(model.cfg.copy()), divisor)
    data = model.data_preprocessor(load_batch(model, shape, args.image, 2), False)
    feats = model.extract_feat(data['inputs'])
    rms = {}
    hooks = [layer.register_forward_pre_hook(
        lambda layer, inputs: rms.__setitem__(layer, inputs[0].pow(2).mean().sqrt()))
             for layer in predictors(model)]
    for head in dense_heads(model):
        head(feats)
    for hook in hooks:
        hook.remove()
    for layer, scale in rms.items():
        torch.nn.init.kaiming_normal_(layer.weight, mode='fan_in', nonlinearity='linear')
        layer.weight /= scale.clamp(min=1e-3)
        torch.nn.init.zeros_(layer.bias)


def dense_heads(model) -> List[torch.nn.Module]:
    """The detector's SSD heads and RPNs."""
    return [head for head in (getattr(model, 'bbox_head', None), getattr(model, 'rpn_head', None))
            if isinstance(head, (SSDHead, RPNHead))]


def predictors(model) -> List[torch.nn.Module]:
    """The layers whose outputs are the dense heads' class logits and box deltas."""
    layers = []
    for head in dense_heads(model):
        if isinstance(head, SSDHead):
            layers += [tower[-1] for tower in (*head.cls_convs, *head.reg_convs)]
        else:
            layers += [head.rpn_cls, head.rpn_reg]
    return layers


def pad_divisor(model) -> int:
    return int(getattr(model.data_preprocessor, 'pad_size_divisor', 1) or 1)


def pipeline_shape(pipeline_cfg: List[dict], divisor: int) -> Tuple[int, int]:
    """(H, W) of the test pipeline's Resize scale, rounded up to ``divisor``."""
    resize = [t for t in pipeline_cfg if t['type'].split('.')[-1] == 'Resize']
    if len(resize) != 1 or 'scale' not in resize[0]:
        raise Refusal('the test pipeline has no single Resize with a scale: give --shape H W')
    width, height = resize[0]['scale']
    return tuple(-(-side // divisor) * divisor for side in (height, width))


def check_shape(shape: Tuple[int, int], divisor: int) -> None:
    if shape[0] % divisor or shape[1] % divisor:
        raise Refusal(f'--shape {shape[0]} {shape[1]}: H and W must be multiples of the data '
                      f"preprocessor's pad_size_divisor {divisor} (the graph does not pad)")


def test_pipeline(model, shape: Tuple[int, int], from_array: bool) -> Compose:
    """The config's test pipeline, resizing to exactly ``shape`` and without annotations."""
    transforms = []
    for t in get_test_pipeline_cfg(model.cfg.copy()):
        name = t['type'].split('.')[-1]
        if name == 'LoadAnnotations':
            continue
        if name == 'LoadImageFromFile' and from_array:
            t = dict(type='mmdet.LoadImageFromNDArray')
        elif name == 'Resize':
            t = dict(type='Resize', scale=(shape[1], shape[0]), keep_ratio=False)
        transforms.append(t)
    return Compose(transforms)


def generated_pictures(count: int) -> List[np.ndarray]:
    """Deterministic BGR pictures: a gradient with filled rectangles and ellipses."""
    rng = np.random.default_rng(0)
    pictures = []
    for _ in range(count):
        height, width = 360, 480
        image = np.empty((height, width, 3), np.uint8)
        image[:] = np.linspace(30, 200, width, dtype=np.uint8)[None, :, None]
        for _ in range(6):
            y0, x0 = rng.integers(0, height - 60), rng.integers(0, width - 60)
            y1, x1 = y0 + rng.integers(30, 140), x0 + rng.integers(30, 180)
            image[y0:y1, x0:x1] = rng.integers(0, 256, 3, dtype=np.uint8)
        image += rng.integers(0, 12, image.shape, dtype=np.uint8)
        pictures.append(image)
    return pictures


def load_batch(model, shape: Tuple[int, int], images: Sequence[str], count: int) -> dict:
    """``count`` images through the test pipeline, collated (``inputs``, ``data_samples``)."""
    sources = list(images) or generated_pictures(2)
    sources = [sources[i % len(sources)] for i in range(count)]
    pipeline = test_pipeline(model, shape, from_array=not images)
    items = [pipeline(dict(img=s, img_id=i) if isinstance(s, np.ndarray) else
                      dict(img_path=s, img_id=i)) for i, s in enumerate(sources)]
    return pseudo_collate(items)


def choose_graph(model, part: str, shape: Tuple[int, int]):
    """The graph to export, its output names, and whether H and W may be dynamic."""
    is_ssd = isinstance(getattr(model, 'bbox_head', None), SSDHead)
    if part == 'backbone':
        outputs = [f'feat{i}' for i in range(len(model.backbone.out_indices))]
        return BackboneGraph(model), outputs, True
    if part == 'features':
        if getattr(model, 'rpn_head', None) is None and not is_ssd:
            raise Refusal(f'--part features covers two-stage detectors (RPN) and SSD-family '
                          f'heads, not {type(model).__name__}: use --part backbone')
        graph = FeatureGraph(model)
        with torch.no_grad():
            count = len(graph(torch.zeros(1, 3, *shape)))
        levels = count // 3
        names = [f'feat{i}' for i in range(count - 2 * levels)]
        names += [f'cls{i}' for i in range(levels)] + [f'reg{i}' for i in range(levels)]
        return graph, names, not is_ssd
    detections = ['boxes', 'scores', 'labels', 'batch_index']
    if is_ssd:
        check_coders(model.bbox_head)
        check_nms_cfg('test_cfg', model.bbox_head.test_cfg)
        return SSDDetectionGraph(model), detections, False
    if getattr(model, 'roi_head', None) is not None:
        check_two_stage(model)
        return TwoStageDetectionGraph(model), detections, True
    raise Refusal(f'end-to-end export covers SSD-family heads and Faster R-CNN, not '
                  f'{type(getattr(model, "bbox_head", model)).__name__}: use --part features '
                  f'or --part backbone')


def check_nms_cfg(where: str, test_cfg) -> None:
    """Refuse test settings the graph's post-processing does not implement."""
    nms = test_cfg.get('nms') or {}
    unsupported = []
    if nms.get('type', 'nms') != 'nms':
        unsupported.append(f"nms type {nms.get('type')!r} (only 'nms')")
    if nms.get('class_agnostic', False):
        unsupported.append('class_agnostic NMS')
    if 'iou_threshold' not in nms:
        unsupported.append('no nms.iou_threshold')
    if test_cfg.get('max_per_img') is None:
        unsupported.append('no max_per_img')
    if unsupported:
        raise Refusal(f'the detector\'s {where} has ' + ', '.join(unsupported) + ': not '
                      'exported (edit the config or use --part features)')


def check_coders(*heads) -> None:
    for head in heads:
        if type(head.bbox_coder) is not DeltaXYWHBBoxCoder:
            raise Refusal(f'{type(head).__name__}: box coder {type(head.bbox_coder).__name__} is '
                          f'not exported (only DeltaXYWHBBoxCoder)')


def check_two_stage(model) -> None:
    """Refuse two-stage detectors whose parts the graph does not reproduce exactly."""
    roi_head = model.roi_head
    extractor = getattr(roi_head, 'bbox_roi_extractor', None)
    problems = []
    if type(model.rpn_head) is not RPNHead:
        problems.append(f'RPN {type(model.rpn_head).__name__} (only RPNHead)')
    if type(roi_head) is not StandardRoIHead or roi_head.with_mask:
        problems.append(f'RoI head {type(roi_head).__name__}'
                        f'{" with masks" if roi_head.with_mask else ""} (only a box-only '
                        f'StandardRoIHead)')
    if type(extractor) is not SingleRoIExtractor:
        problems.append(f'RoI extractor {type(extractor).__name__} (only SingleRoIExtractor)')
    else:
        for layer in extractor.roi_layers:
            if type(layer) is not RoIAlign or layer.pool_mode != 'avg':
                problems.append(f"RoI layer {type(layer).__name__} pool_mode "
                                f"{getattr(layer, 'pool_mode', None)!r} (only RoIAlign 'avg')")
                break
    bbox_head = getattr(roi_head, 'bbox_head', None)
    if bbox_head is not None and (bbox_head.reg_class_agnostic or bbox_head.custom_cls_channels
                                  or not bbox_head.with_reg):
        problems.append('a box head with class-agnostic or no regression, or custom class '
                        'channels')
    if not problems:
        check_coders(model.rpn_head, bbox_head)
    if problems:
        raise Refusal('not exported end to end: ' + '; '.join(problems) + '. --part features '
                      'exports everything before the RoI stage')
    check_nms_cfg('test_cfg.rpn', model.rpn_head.test_cfg)
    check_nms_cfg('test_cfg.rcnn', roi_head.test_cfg)


def check_features(session, graph, batch: dict) -> Dict[str, float]:
    """Relative differences per output: onnxruntime vs the same modules in PyTorch (CBAM on
    its default fast path)."""
    image = torch.stack(batch['inputs']).float()
    with torch.no_grad():
        expected = graph(image)
    names = [output.name for output in session.get_outputs()]
    return {name: relative_difference(actual, want)
            for name, actual, want in zip(names, run_onnx(session, image), expected)}


def check_detections(session, batch: dict, model) -> Dict[str, float]:
    """onnxruntime's detections vs mmdet's ``predict`` on the same images."""
    image = torch.stack(batch['inputs']).float()
    with torch.no_grad():
        data = model.data_preprocessor(batch, False)
        expected = model.predict(data['inputs'], data['data_samples'], rescale=False)
    return detection_differences(run_onnx(session, image), expected, max(image.shape[-2:]))


def export_and_check(args, model, graph, output_names, shape, spatial_dynamic) -> List[dict]:
    """Export into a temporary file, check it, then move it to ``args.out``.

    Returns one dict per check: ``batch``, ``shape``, ``ok``, and ``differences`` (per output
    name for feature graphs, ``detection_differences``' dict for detectors).
    """
    dynamic_axes = None
    checks = [(1, shape)]
    if args.dynamic:
        dynamic_axes = {0: 'batch'}
        checks = [(2, shape)]  # an example batch of 1 would specialise the batch axis to 1
        if spatial_dynamic:
            dynamic_axes.update({2: 'height', 3: 'width'})
            step = max(32, pad_divisor(model))
            checks.append((1, (shape[0] + 2 * step, shape[1] + step)))
        else:
            checks.append((1, shape))
    example = torch.stack(load_batch(model, shape, args.image, checks[0][0])['inputs']).float()
    folder = osp.dirname(osp.abspath(args.out))
    os.makedirs(folder, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory(prefix='.export-', dir=folder) as tmp:
        path = osp.join(tmp, 'graph.onnx')
        export_onnx(graph, example, path, output_names, dynamic_axes, args.opset)
        session = onnx_session(path, args.threads)
        for count, check_shape_ in checks:
            batch = load_batch(model, check_shape_, args.image, count)
            if isinstance(graph, (SSDDetectionGraph, TwoStageDetectionGraph)):
                diff = check_detections(session, batch, model)
                ok = detections_match(diff)
            else:
                diff = check_features(session, graph, batch)
                ok = max(diff.values()) <= FEATURE_RTOL
            results.append(dict(batch=count, shape=check_shape_, ok=ok, differences=diff))
        if not all(r['ok'] for r in results):
            raise SystemExit('export_onnx: onnxruntime differs from PyTorch beyond the bars; '
                             'nothing written\n' + '\n'.join(map(describe, results)))
        os.replace(path, args.out)
    return results


def describe(check: dict) -> str:
    """One line for a check of ``export_and_check``."""
    where = f"batch {check['batch']}, {check['shape'][0]}x{check['shape'][1]}"
    diff = check['differences']
    if 'detections' not in diff:
        worst = max(diff, key=diff.get)
        return (f'{where}: largest relative difference {diff[worst]:.2e} ({worst}; bar '
                f'{FEATURE_RTOL:g})')
    return (f"{where}: {diff['exported']} detections, mmdet {diff['detections']}, without a "
            f"same-label counterpart within the bars {diff['unmatched']}; largest box "
            f"difference {diff['box']:.2e} of the image side (bar {BOX_RTOL:g}), largest score "
            f"difference {diff['score']:.2e} (bar {SCORE_ATOL:g})")


def main(argv=None) -> List[dict]:
    args = parse_args(argv)
    try:
        model = load_model(args)
        divisor = pad_divisor(model)
        shape = tuple(args.shape) if args.shape else pipeline_shape(
            get_test_pipeline_cfg(model.cfg.copy()), divisor)
        check_shape(shape, divisor)
        graph, output_names, spatial_dynamic = choose_graph(model, args.part, shape)
        graph.eval()
        checks = export_and_check(args, model, graph, output_names, shape, spatial_dynamic)
    except (Refusal, ExportError, ValueError) as err:
        raise SystemExit(f'export_onnx: {err}')
    dims = 'dynamic batch' + (', H, W' if args.dynamic and spatial_dynamic else '')
    print(f"wrote {args.out} ({args.part}, input {shape[0]}x{shape[1]}"
          f"{', ' + dims if args.dynamic else ''}, opset {args.opset})")
    for check in checks:
        print('  onnxruntime vs PyTorch, ' + describe(check))
    return checks


if __name__ == '__main__':
    main()
