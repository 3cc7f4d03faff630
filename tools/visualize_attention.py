"""See what CBAM attends to: spatial and channel attention per stage, and Grad-CAM (paper Fig. 4).

    python tools/visualize_attention.py CONFIG [CHECKPOINT] IMAGE [IMAGE ...] --out-dir DIR
        [--baseline-config CONFIG [--baseline-checkpoint CHECKPOINT]] [--class NAME]
        [--device cpu]

For every image, DIR receives:
- ``<image>_spatial.png``: the image, then per backbone stage the spatial attention map Ms of the
  stage's last CBAM, upsampled, stretched to its own range (given in the panel's title) and
  overlaid on the image (red = most attended).
- ``<image>_channel.png``: per stage, the channel attention Mc of every block (rows) over the
  channels (columns), on a 0..1 colour scale.
- ``<image>_gradcam.png``: Grad-CAM of the backbone's last stage for one detection (the
  top-scoring one, or the top-scoring one of ``--class``), with its box; with
  ``--baseline-config`` the baseline's Grad-CAM for the same class comes first, side by side.

Without CHECKPOINT the model keeps its random initialisation (useful to check the tool only).
Images are read and prepared by the config's own test pipeline.
"""
import argparse
import os
import os.path as osp
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from mmcv.transforms import Compose
from mmengine.dataset import pseudo_collate
from mmengine.utils import ProgressBar

import cbam_mmdet  # noqa: F401 - registers the components
from cbam_mmdet.models import CBAM
from cbam_mmdet.utils.pretrained import CheckpointError, read_checkpoint
from mmdet.apis import init_detector
from mmdet.utils import get_test_pipeline_cfg

CHECKPOINT_SUFFIXES = ('.pth', '.pt', '.ckpt')
PANEL_HEIGHT = 256


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

    def __init__(self, config: str, checkpoint: Optional[str], device: str):
        self.model = init_detector(config, checkpoint, device=device)
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

    def grad_cam(self, data: dict,
                 class_name: Optional[str]) -> Optional[Tuple[np.ndarray, np.ndarray, str, float]]:
        """Grad-CAM of the backbone's last output for one detection.

        Returns (cam in [0, 1] on the input image, box xyxy in original pixels, class, score),
        or None when there is no detection (of that class).
        """
        features = {}

        def keep(module, args, outputs):
            outputs[-1].retain_grad()
            features['last'] = outputs[-1]

        handle = self.model.backbone.register_forward_hook(keep)
        try:
            with torch.enable_grad():
                result = self.model.predict(data['inputs'], data['data_samples'])[0]
        finally:
            handle.remove()
        pred = result.pred_instances
        candidates = torch.arange(len(pred.scores))
        if class_name is not None:
            candidates = candidates[pred.labels == self.classes.index(class_name)]
        if len(candidates) == 0:
            return None
        best = candidates[pred.scores[candidates].argmax()]
        self.model.zero_grad()
        pred.scores[best].backward()
        activation, grad = features['last'], features['last'].grad
        cam = F.relu((grad.mean((2, 3), keepdim=True) * activation).sum(1))[0].detach()
        cam = on_input_image(cam / cam.max().clamp(min=1e-12), data)
        return (cam, pred.bboxes[best].detach().cpu().numpy(),
                self.classes[int(pred.labels[best])], pred.scores[best].item())


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


def spatial_figure(image: np.ndarray, maps: dict, data: dict) -> np.ndarray:
    panels = [labelled(image.copy(), 'input')]
    for stage, blocks in maps.items():
        spatial = blocks[-1][1]
        if spatial is not None:
            heat = on_input_image(spatial[0, 0], data)
            low, high = heat.min(), heat.max()
            # Stretched to the map's own range (in the title): trained maps often stay near 0.5.
            stretched = (heat - low) / max(high - low, 1e-6)
            panels.append(labelled(overlay(image, stretched), f'{stage} Ms {low:.2f}-{high:.2f}'))
    return np.concatenate(panels, axis=1)


def channel_figure(maps: dict) -> Optional[np.ndarray]:
    rows = []
    for stage, blocks in maps.items():
        channel = [c[0, :, 0, 0].cpu().numpy() for c, _ in blocks if c is not None]
        if not channel:
            continue
        strip = cv2.resize(np.stack(channel), (512, 16 * len(channel)),
                           interpolation=cv2.INTER_NEAREST)
        strip = cv2.applyColorMap(np.uint8(255 * strip), cv2.COLORMAP_VIRIDIS)
        header = np.zeros((18, 512, 3), np.uint8)
        cv2.putText(header, f'{stage}: Mc of {len(channel)} blocks x {len(channel[0])} channels '
                    f'(0 dark .. 1 yellow)', (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (255, 255, 255), 1, cv2.LINE_AA)
        rows += [header, strip]
    return np.concatenate(rows, axis=0) if rows else None


def gradcam_panel(image: np.ndarray, detector: Detector, data: dict, class_name: Optional[str],
                  title: str) -> np.ndarray:
    found = detector.grad_cam(data, class_name)
    if found is None:
        return labelled(image.copy(), f'{title}: no detection')
    cam, box, name, score = found
    panel = overlay(image, cam)
    scale = np.array(data['data_samples'][0].scale_factor * 2)
    x1, y1, x2, y2 = (box * scale).round().astype(int)
    cv2.rectangle(panel, (x1, y1), (x2, y2), (255, 255, 255), 2)
    return labelled(panel, f'{title}: {name} {score:.2f}')


def main(argv=None) -> None:
    args = parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    detector = Detector(args.config, args.checkpoint, args.device)
    if not detector.stages:
        print(f'{args.config}: the backbone has no CBAM; writing Grad-CAM only')
    baseline = (Detector(args.baseline_config, args.baseline_checkpoint, args.device)
                if args.baseline_config else None)
    for model in filter(None, (detector, baseline)):
        if args.class_name is not None and args.class_name not in model.classes:
            raise SystemExit(f'--class {args.class_name!r} is not a class of this model; its '
                             f'classes: {", ".join(model.classes)}')
    progress = ProgressBar(len(args.inputs))
    for image_path in args.inputs:
        stem = osp.join(args.out_dir, osp.splitext(osp.basename(image_path))[0])
        data = detector.prepare(image_path)
        image = input_image(data)
        if detector.stages:
            maps = detector.attention(data)
            cv2.imwrite(f'{stem}_spatial.png', spatial_figure(image, maps, data))
            channel = channel_figure(maps)
            if channel is not None:
                cv2.imwrite(f'{stem}_channel.png', channel)
        panels = [gradcam_panel(image, detector, data, args.class_name, 'CBAM'
                                if detector.stages else 'model')]
        if baseline is not None:
            base_data = baseline.prepare(image_path)
            panels.insert(0, gradcam_panel(input_image(base_data), baseline, base_data,
                                           args.class_name, 'baseline'))
        cv2.imwrite(f'{stem}_gradcam.png', np.concatenate(panels, axis=1))
        progress.update()
    print(f'\nwrote {len(args.inputs)} image(s) to {args.out_dir}')


if __name__ == '__main__':
    main()
