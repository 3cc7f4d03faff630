"""See what CBAM attends to: spatial and channel attention per stage, and Grad-CAM (paper Fig. 4).

    python tools/visualize_attention.py CONFIG [CHECKPOINT] IMAGE [IMAGE ...] --out-dir DIR
        [--baseline-config CONFIG [--baseline-checkpoint CHECKPOINT]] [--class NAME]
        [--score-thr 0.3] [--cfg-options KEY=VALUE ...] [--allow-mismatch] [--device cpu]

For every image, DIR receives:
- ``<image>_spatial.png``: the image, then per backbone stage the spatial attention map Ms of the
  stage's last CBAM, upsampled, stretched to its own range (given in the panel's title with the
  digits that tell it apart, and the stretch factor) and overlaid on the image (red = most
  attended); a constant map is drawn unstretched and titled "constant".
- ``<image>_channel.png``: per stage, the channel attention Mc of every block (rows) over all its
  channels (columns, the same number of pixels each, given in the header), on a 0..1 colour
  scale.
- ``<image>_gradcam.png``: Grad-CAM of the backbone's last stage for one detection (the
  top-scoring one, or the top-scoring one of ``--class``, scoring at least ``--score-thr``),
  with its box; with ``--baseline-config`` the baseline's Grad-CAM for the same class comes
  first, side by side. Two-stage detectors backpropagate the RoI head's score; one-stage
  detectors (RetinaNet, FCOS, ATSS, ...), whose heads detach their scores in post-processing,
  backpropagate the same score recomputed from the head's outputs at the detection's location.

Without CHECKPOINT the model keeps its random initialisation (useful to check the tool only); a
checkpoint that does not fit the model is refused (``--allow-mismatch`` loads what fits). Images
are read and prepared by the config's own test pipeline. The PNGs of an image are written once
all of them are made, each through a temporary file, so a crash leaves none half-written.
"""
import argparse
import math
import os
import os.path as osp
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from mmcv.transforms import Compose
from mmengine.config import Config, DictAction
from mmengine.dataset import pseudo_collate
from mmengine.utils import ProgressBar

import cbam_mmdet  # noqa: F401 - registers the components
from cbam_mmdet.models import CBAM
from cbam_mmdet.models.utils import build_hints, warn_uncovered_stages
from cbam_mmdet.runtime.atomic_files import write_atomic
from cbam_mmdet.runtime.checkpoints import CheckpointError, check_checkpoint_fits, read_checkpoint
from mmdet.apis import init_detector
from mmdet.models.dense_heads.base_dense_head import BaseDenseHead
from mmdet.utils import get_test_pipeline_cfg

CHECKPOINT_SUFFIXES = ('.pth', '.pt', '.ckpt')
PANEL_HEIGHT = 256
# A spatial map whose values span less than this is drawn unstretched and called constant.
CONSTANT_SPREAD = 1e-6
CHANNEL_ROW_HEIGHT = 16
MIN_CHANNEL_WIDTH = 512
# A recomputed one-stage score must match the detection's to this relative tolerance.
SCORE_MATCH_RTOL = 1e-4


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('config', help='detector config (with CBAM in its backbone)')
    parser.add_argument('inputs', nargs='+', metavar='[CHECKPOINT] IMAGE',
                        help='an optional checkpoint (.pth), then one or more images')
    parser.add_argument('--out-dir', required=True, help='where to write the PNGs')
    parser.add_argument('--baseline-config', help='a second detector for side-by-side Grad-CAM')
    parser.add_argument('--baseline-checkpoint', help='checkpoint of the baseline detector')
    parser.add_argument('--class', dest='class_name',
                        help='explain the top detection of this class (default: top overall)')
    parser.add_argument('--score-thr', type=float, default=0.,
                        help='explain only a detection scoring at least this')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings of CONFIG (and the baseline config)')
    parser.add_argument('--allow-mismatch', action='store_true',
                        help='load checkpoints that do not fit the model (mmdet\'s lenient '
                        'loading: missing and misshapen weights keep their initialisation)')
    parser.add_argument('--device', default='cpu')
    args = parser.parse_args(argv)
    args.checkpoint = None
    if args.inputs[0].endswith(CHECKPOINT_SUFFIXES):
        args.checkpoint, args.inputs = args.inputs[0], args.inputs[1:]
    if not args.inputs:
        parser.error('no image given')
    for path in [args.checkpoint, args.baseline_checkpoint, *args.inputs]:
        if path is not None and not osp.isfile(path):
            parser.error(f'no such file: {path}')
    for path in [args.checkpoint, args.baseline_checkpoint]:
        if path is not None:
            try:
                read_checkpoint(path, mmap=True)
            except CheckpointError as err:
                parser.error(str(err))
    return args


class Detector:
    """A detector, its test pipeline, and its backbone's CBAM modules grouped by stage."""

    def __init__(self, config: str, checkpoint: Optional[str], device: str,
                 cfg_options: Optional[dict] = None, allow_mismatch: bool = False):
        cfg = Config.fromfile(config)
        if cfg_options:
            cfg.merge_from_dict(cfg_options)
        with build_hints(cfg.model):
            self.model = init_detector(cfg, checkpoint, device=device)
        if checkpoint is not None and not allow_mismatch:
            try:
                check_checkpoint_fits(self.model, checkpoint, f'the model of {config}',
                                      '--allow-mismatch')
            except CheckpointError as err:
                raise SystemExit(f'visualize_attention: error: {err}') from err
        warn_uncovered_stages(self.model)
        self.model.eval()
        if checkpoint is None:  # init_detector then assumes COCO; the config knows better
            metainfo = self.model.cfg.test_dataloader.dataset.get('metainfo', {})
            if 'classes' in metainfo:
                self.model.dataset_meta = dict(classes=metainfo['classes'])
        self.classes = list(self.model.dataset_meta['classes'])
        pipeline_cfg = get_test_pipeline_cfg(self.model.cfg.copy())
        self.pipeline = Compose([t for t in pipeline_cfg if t['type'] != 'LoadAnnotations'])
        self.stages: Dict[str, List[CBAM]] = {}
        for name, module in self.model.backbone.named_modules():
            if isinstance(module, CBAM):
                self.stages.setdefault(name.split('.')[0], []).append(module)

    def prepare(self, image_path: str) -> dict:
        data = self.pipeline(dict(img_path=image_path, img_id=0))
        return self.model.data_preprocessor(pseudo_collate([data]), False)

    @torch.no_grad()
    def attention(self, data: dict) -> Dict[str, List[Tuple[torch.Tensor, torch.Tensor]]]:
        """Per stage, the (channel, spatial) maps of each CBAM for this image."""
        inputs: Dict[CBAM, torch.Tensor] = {}
        handles = [m.register_forward_pre_hook(lambda m, args: inputs.__setitem__(m, args[0]))
                   for blocks in self.stages.values() for m in blocks]
        try:
            self.model.extract_feat(data['inputs'])
        finally:
            for handle in handles:
                handle.remove()
        return {stage: [m.attention(inputs[m]) for m in blocks]
                for stage, blocks in self.stages.items()}

    def grad_cam(self, data: dict, class_name: Optional[str], score_thr: float = 0.
                 ) -> Optional[Tuple[np.ndarray, np.ndarray, str, float]]:
        """Grad-CAM of the backbone's last output for one detection.

        Returns (cam in [0, 1] on the input image, box xyxy in original pixels, class, score),
        or None when there is no detection (of that class, scoring at least ``score_thr``).
        """
        features = {}

        def keep(module, args, outputs):
            outputs[-1].retain_grad()
            features['last'] = outputs[-1]

        handle = self.model.backbone.register_forward_hook(keep)
        try:
            with torch.enable_grad():
                pred, score_of = self.predict_with_scores(data)
        finally:
            handle.remove()
        keep_mask = pred.scores >= score_thr
        if class_name is not None:
            keep_mask &= pred.labels == self.classes.index(class_name)
        candidates = torch.nonzero(keep_mask).flatten()
        if len(candidates) == 0:
            return None
        best = int(candidates[pred.scores[candidates].argmax()])
        self.model.zero_grad()
        score_of(best).backward()
        activation, grad = features['last'], features['last'].grad
        cam = F.relu((grad.mean((2, 3), keepdim=True) * activation).sum(1))[0].detach()
        cam = on_input_image(cam / cam.max().clamp(min=1e-12), data)
        return (cam, pred.bboxes[best].detach().cpu().numpy(),
                self.classes[int(pred.labels[best])], pred.scores[best].item())

    def predict_with_scores(self, data: dict) -> Tuple[object, Callable[[int], torch.Tensor]]:
        """The detections, and for detection ``i`` its score as a tensor that backpropagates
        to the backbone."""
        if not hasattr(self.model, 'bbox_head'):  # two-stage: the RoI head keeps the graph
            pred = self.model.predict(data['inputs'], data['data_samples'])[0].pred_instances
            return pred, lambda i: pred.scores[i]
        return dense_head_predict_with_scores(self.model, data)


def dense_head_predict_with_scores(model, data: dict):
    """One-stage detections, and each one's score recomputed from the head's outputs.

    mmdet's dense heads detach their outputs before post-processing, so a detection's score has
    no graph. Its value is the pre-NMS class score at the anchor / location that produced it
    (times the centerness for FCOS and ATSS), so the same expression over the head's outputs,
    taken where it equals the detection's score, backpropagates exactly that score.
    """
    head = model.bbox_head
    if (type(head).predict_by_feat is not BaseDenseHead.predict_by_feat
            or not hasattr(head, 'cls_out_channels')):
        raise SystemExit(
            f'Grad-CAM: {type(head).__name__} post-processes its scores in its own way, so a '
            f'detection cannot be traced back to the head\'s outputs; supported: two-stage '
            f'detectors and dense heads with mmdet\'s standard post-processing (RetinaNet, '
            f'FCOS, ATSS, GFL, ...)')
    outs = head(model.extract_feat(data['inputs']))
    metas = [sample.metainfo for sample in data['data_samples']]
    pred = head.predict_by_feat(*outs, batch_img_metas=metas, rescale=True)[0]

    def flat(levels: Sequence[torch.Tensor], width: int) -> torch.Tensor:
        return torch.cat([level[0].permute(1, 2, 0).reshape(-1, width) for level in levels])

    logits = flat(outs[0], head.cls_out_channels)
    scores = logits.sigmoid() if head.use_sigmoid_cls else logits.softmax(-1)[:, :-1]
    if len(outs) == 3:  # score factors (centerness), as predict_by_feat multiplies them in
        scores = scores * flat(outs[2], 1).sigmoid()

    def score_of(index: int) -> torch.Tensor:
        column = scores[:, int(pred.labels[index])]
        target = pred.scores[index]
        nearest = int((column.detach() - target).abs().argmin())
        if not torch.isclose(column[nearest].detach(), target, rtol=SCORE_MATCH_RTOL):
            raise SystemExit(f'Grad-CAM: no score of {type(head).__name__}\'s outputs equals the '
                             f'detection\'s ({target.item():.6f}); its post-processing changes '
                             f'scores (e.g. soft-NMS), which this tool cannot trace back')
        return column[nearest]

    return pred, score_of


def input_image(data: dict) -> np.ndarray:
    """The network's input image (BGR uint8), as the preprocessor fed it (before normalising)."""
    sample = data['data_samples'][0]
    img = cv2.imread(sample.img_path)
    h, w = sample.img_shape
    return cv2.resize(img, (w, h))


def on_input_image(heat: torch.Tensor, data: dict) -> np.ndarray:
    """A (h, w) map over the padded network input -> the same map over the (unpadded) image."""
    h, w = data['data_samples'][0].img_shape
    heat = F.interpolate(heat[None, None].float(), size=data['inputs'].shape[2:],
                         mode='bilinear', align_corners=False)
    return heat[0, 0, :h, :w].cpu().numpy()


def overlay(image: np.ndarray, heat: np.ndarray) -> np.ndarray:
    colored = cv2.applyColorMap(np.uint8(255 * np.clip(heat, 0, 1)), cv2.COLORMAP_JET)
    return cv2.addWeighted(image, 0.5, colored, 0.5, 0)


def labelled(panel: np.ndarray, text: str) -> np.ndarray:
    scale = PANEL_HEIGHT / panel.shape[0]
    panel = cv2.resize(panel, (max(1, round(panel.shape[1] * scale)), PANEL_HEIGHT))
    cv2.rectangle(panel, (0, 0), (panel.shape[1], 18), (0, 0, 0), -1)
    cv2.putText(panel, text, (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1,
                cv2.LINE_AA)
    return panel


def value_range(low: float, high: float) -> str:
    """``0.4987-0.5013 (x385)``: a map's range with the digits that tell its ends apart (two
    significant digits of the spread) and the factor the stretch multiplies it by."""
    spread = high - low
    digits = min(6, max(2, 1 - math.floor(math.log10(spread))))
    return f'{low:.{digits}f}-{high:.{digits}f} (x{1 / spread:.3g})'


def spatial_figure(image: np.ndarray, maps: dict, data: dict) -> np.ndarray:
    panels = [labelled(image.copy(), 'input')]
    for stage, blocks in maps.items():
        spatial = blocks[-1][1]
        if spatial is None:
            continue
        heat, title = spatial_panel(on_input_image(spatial[0, 0], data))
        panels.append(labelled(overlay(image, heat), f'{stage} {title}'))
    return np.concatenate(panels, axis=1)


def spatial_panel(heat: np.ndarray) -> Tuple[np.ndarray, str]:
    """The map to draw and its title: stretched to its own range (trained maps often stay near
    0.5), or, when constant, on the absolute 0..1 scale, since there is nothing to stretch."""
    low, high = float(heat.min()), float(heat.max())
    if high - low < CONSTANT_SPREAD:
        return heat, f'Ms constant {low:.4f}'
    return (heat - low) / (high - low), f'Ms {value_range(low, high)}'


def channel_rows(channel: List[np.ndarray], width: int) -> Tuple[np.ndarray, str]:
    """One row per block, each channel the same whole number of pixels wide (blocks of other
    widths are padded with grey); and how the header should describe the columns."""
    rows = []
    for gates in channel:
        scale = width // len(gates)
        row = np.full((CHANNEL_ROW_HEIGHT, width, 3), 64, np.uint8)
        painted = cv2.applyColorMap(np.uint8(255 * np.clip(np.repeat(gates, scale), 0, 1)),
                                    cv2.COLORMAP_VIRIDIS).reshape(1, -1, 3)
        row[:, :painted.shape[1]] = painted
        rows.append(row)
    widths = sorted({len(gates) for gates in channel})
    pixels = sorted({width // n for n in widths})
    columns = (f'{widths[0]} channels' if len(widths) == 1 else
               f'{widths[0]}-{widths[-1]} channels')
    return np.concatenate(rows), (f'{columns}, {"/".join(map(str, pixels))} px each')


def channel_figure(maps: dict) -> Optional[np.ndarray]:
    stages = {stage: [c[0, :, 0, 0].cpu().numpy() for c, _ in blocks if c is not None]
              for stage, blocks in maps.items()}
    stages = {stage: channel for stage, channel in stages.items() if channel}
    if not stages:
        return None
    width = max(MIN_CHANNEL_WIDTH, *(len(g) for channel in stages.values() for g in channel))
    rows = []
    for stage, channel in stages.items():
        strip, columns = channel_rows(channel, width)
        header = np.zeros((18, width, 3), np.uint8)
        cv2.putText(header, f'{stage}: Mc of {len(channel)} blocks x {columns} '
                    f'(0 dark .. 1 yellow)', (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (255, 255, 255), 1, cv2.LINE_AA)
        rows += [header, strip]
    return np.concatenate(rows, axis=0)


def write_png(path: str, image: np.ndarray) -> None:
    ok, encoded = cv2.imencode('.png', image)
    if not ok:
        raise RuntimeError(f'{path}: OpenCV could not encode the image')
    write_atomic(path, encoded.tobytes())


def gradcam_panel(image: np.ndarray, detector: Detector, data: dict, class_name: Optional[str],
                  score_thr: float, title: str) -> np.ndarray:
    found = detector.grad_cam(data, class_name, score_thr)
    if found is None:
        above = f' >= {score_thr:g}' if score_thr > 0 else ''
        return labelled(image.copy(), f'{title}: no detection{above}')
    cam, box, name, score = found
    panel = overlay(image, cam)
    scale = np.array(data['data_samples'][0].scale_factor * 2)
    x1, y1, x2, y2 = (box * scale).round().astype(int)
    cv2.rectangle(panel, (x1, y1), (x2, y2), (255, 255, 255), 2)
    # A map that is 0 everywhere (no positive evidence) would look like a valid cold map.
    empty = '' if cam.max() > 0 else ' (CAM all 0)'
    return labelled(panel, f'{title}: {name} {score:.2f}{empty}')


def main(argv=None) -> None:
    args = parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    detector = Detector(args.config, args.checkpoint, args.device, args.cfg_options,
                        args.allow_mismatch)
    if not detector.stages:
        print(f'{args.config}: the backbone has no CBAM; writing Grad-CAM only')
    baseline = (Detector(args.baseline_config, args.baseline_checkpoint, args.device,
                         args.cfg_options, args.allow_mismatch)
                if args.baseline_config else None)
    for model in filter(None, (detector, baseline)):
        if args.class_name is not None and args.class_name not in model.classes:
            raise SystemExit(f'--class {args.class_name!r} is not a class of this model; its '
                             f'classes: {", ".join(model.classes)}')
    progress = ProgressBar(len(args.inputs))
    for image_path in args.inputs:
        stem = osp.join(args.out_dir, osp.splitext(osp.basename(image_path))[0])
        for suffix, figure in figures(detector, baseline, image_path, args).items():
            write_png(f'{stem}_{suffix}.png', figure)
        progress.update()
    print(f'\nwrote {len(args.inputs)} image(s) to {args.out_dir}')


def figures(detector: Detector, baseline: Optional[Detector], image_path: str,
            args) -> Dict[str, np.ndarray]:
    """The figures of one image, by file suffix ('spatial', 'channel', 'gradcam')."""
    data = detector.prepare(image_path)
    image = input_image(data)
    made = {}
    if detector.stages:
        maps = detector.attention(data)
        made['spatial'] = spatial_figure(image, maps, data)
        channel = channel_figure(maps)
        if channel is not None:
            made['channel'] = channel
    panels = [gradcam_panel(image, detector, data, args.class_name, args.score_thr,
                            'CBAM' if detector.stages else 'model')]
    if baseline is not None:
        base_data = baseline.prepare(image_path)
        panels.insert(0, gradcam_panel(input_image(base_data), baseline, base_data,
                                       args.class_name, args.score_thr, 'baseline'))
    made['gradcam'] = np.concatenate(panels, axis=1)
    return made


if __name__ == '__main__':
    main()
