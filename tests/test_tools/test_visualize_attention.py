import os.path as osp

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.runner import save_checkpoint

from conftest import REPO_ROOT, load_tool
from mmdet.registry import MODELS

visualize = load_tool('visualize_attention')

DEMO = osp.join(REPO_ROOT, 'configs', 'demo')
CBAM_CONFIG = osp.join(DEMO, 'faster-rcnn_r18-cbam_fpn_200i_synthetic.py')
BASELINE_CONFIG = osp.join(DEMO, 'faster-rcnn_r18_fpn_200i_synthetic.py')


@pytest.fixture
def image(tmp_path):
    rng = np.random.default_rng(0)
    img = (rng.random((200, 240, 3)) * 60 + 40).astype(np.uint8)
    cv2.circle(img, (90, 100), 40, (30, 200, 240), -1)
    cv2.rectangle(img, (150, 30), (220, 90), (200, 40, 40), -1)
    path = str(tmp_path / 'shapes.jpg')
    cv2.imwrite(path, img)
    return path


def panels(path, count):
    figure = cv2.imread(path)
    assert figure is not None and figure.shape[0] == visualize.PANEL_HEIGHT
    width = figure.shape[1] // count
    return [figure[20:, i * width:(i + 1) * width].astype(int) for i in range(count)]


def test_writes_attention_maps_and_gradcam_for_a_random_cbam_detector(image, tmp_path):
    out = tmp_path / 'out'
    visualize.main([CBAM_CONFIG, image, '--out-dir', str(out)])
    # input + the last CBAM's spatial map of each of the 4 stages, overlaid
    spatial = panels(str(out / 'shapes_spatial.png'), 5)
    for overlay in spatial[1:]:
        assert np.abs(overlay - spatial[0]).mean() > 5, 'overlay equals the input image'
    channel = cv2.imread(str(out / 'shapes_channel.png'))
    assert channel is not None and channel.std() > 5
    gradcam = cv2.imread(str(out / 'shapes_gradcam.png'))
    assert gradcam is not None and gradcam.shape[0] == visualize.PANEL_HEIGHT


def test_trained_checkpoint_class_choice_and_baseline_side_by_side(image, tmp_path):
    cfg = Config.fromfile(CBAM_CONFIG)
    model = MODELS.build(cfg.model)
    model.init_weights()
    checkpoint = str(tmp_path / 'cbam.pth')
    save_checkpoint({'state_dict': model.state_dict(),
                     'meta': dict(dataset_meta=dict(classes=('circle', 'square', 'triangle')))},
                    checkpoint)
    out = tmp_path / 'side'
    visualize.main([CBAM_CONFIG, checkpoint, image, image, '--out-dir', str(out),
                    '--baseline-config', BASELINE_CONFIG, '--class', 'square'])
    figure = cv2.imread(str(out / 'shapes_gradcam.png'))
    assert figure.shape[1] >= 2 * visualize.PANEL_HEIGHT  # baseline | CBAM


def test_bad_arguments_are_refused(image, tmp_path, capsys):
    with pytest.raises(SystemExit, match="'giraffe' is not a class"):
        visualize.main([CBAM_CONFIG, image, '--out-dir', str(tmp_path), '--class', 'giraffe'])
    with pytest.raises(SystemExit):
        visualize.main([CBAM_CONFIG, str(tmp_path / 'missing.jpg'), '--out-dir', str(tmp_path)])
    assert 'no such file' in capsys.readouterr().err


def test_corrupt_checkpoint_is_refused_by_name(image, tmp_path, capsys):
    checkpoint = tmp_path / 'model.pth'
    checkpoint.write_bytes(b'PK\x03\x04 truncated download')
    with pytest.raises(SystemExit):
        visualize.main([CBAM_CONFIG, str(checkpoint), image, '--out-dir', str(tmp_path / 'out')])
    err = capsys.readouterr().err
    assert f'checkpoint {checkpoint}: is truncated, corrupt or not a PyTorch checkpoint' in err
    assert not (tmp_path / 'out').exists()


ONE_STAGE = {
    'retinanet': "_base_ = 'mmdet::retinanet/retinanet_r18_fpn_1x_coco.py'\n",
    'atss': ("_base_ = 'mmdet::atss/atss_r50_fpn_1x_coco.py'\n"
             "model = dict(backbone=dict(depth=18), neck=dict(in_channels=[64, 128, 256, 512]))\n"),
}
SMALL_ONE_STAGE = """
custom_imports = dict(imports=['cbam_mmdet'], allow_failed_imports=False)
model = dict(backbone=dict(type='CBAMResNet', init_cfg=None), bbox_head=dict(num_classes=3))
test_dataloader = dict(dataset=dict(
    metainfo=dict(classes=('circle', 'square', 'triangle')),
    pipeline=[dict(type='LoadImageFromFile'),
              dict(type='Resize', scale=(128, 128), keep_ratio=True),
              dict(type='PackDetInputs',
                   meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))]))
"""
# A random head scores about its prior (0.01), below the configs' score_thr of 0.05.
NO_SCORE_THR = ['--cfg-options', 'model.test_cfg.score_thr=0.0']


@pytest.fixture(params=sorted(ONE_STAGE))
def one_stage_config(request, tmp_path):
    path = tmp_path / f'{request.param}_r18-cbam_small.py'
    path.write_text(ONE_STAGE[request.param] + SMALL_ONE_STAGE)
    return str(path)


def test_gradcam_of_a_one_stage_detector_backpropagates_its_score(one_stage_config, image,
                                                                  tmp_path):
    torch.manual_seed(0)
    detector = visualize.Detector(one_stage_config, None, 'cpu',
                                  cfg_options={'model.test_cfg.score_thr': 0.0})
    data = detector.prepare(image)
    features = []
    detector.model.backbone.register_forward_hook(lambda m, args, out: features.append(out[-1]))
    with torch.enable_grad():
        pred, score_of = visualize.dense_head_predict_with_scores(detector.model, data)
    assert len(pred.scores) > 0 and not pred.scores.requires_grad  # mmdet's heads detach
    best = int(pred.scores.argmax())
    score = score_of(best)
    torch.testing.assert_close(score.detach(), pred.scores[best], rtol=1e-6, atol=0)
    (grad, ) = torch.autograd.grad(score, features[-1])
    assert grad.abs().sum() > 0  # the detection's score reaches the backbone's last stage
    cam, box, name, found = detector.grad_cam(data, None)
    assert cam.shape == tuple(data['data_samples'][0].img_shape) and 0 <= cam.max() <= 1
    assert found == pytest.approx(pred.scores[best].item()) and name in detector.classes
    out = tmp_path / 'out'
    visualize.main([one_stage_config, image, '--out-dir', str(out)] + NO_SCORE_THR)
    assert cv2.imread(str(out / 'shapes_gradcam.png')) is not None


def test_score_thr_leaves_no_detection_to_explain(image):
    detector = visualize.Detector(CBAM_CONFIG, None, 'cpu')
    data = detector.prepare(image)
    assert detector.grad_cam(data, None, score_thr=0.) is not None
    assert detector.grad_cam(data, None, score_thr=1.01) is None


def test_a_checkpoint_of_another_model_is_refused(image, tmp_path):
    model = MODELS.build(Config.fromfile(BASELINE_CONFIG).model)
    checkpoint = str(tmp_path / 'baseline.pth')
    save_checkpoint({'state_dict': model.state_dict()}, checkpoint)
    with pytest.raises(SystemExit, match=r'(?s)does not fit the model of .*missing 72 keys'):
        visualize.main([CBAM_CONFIG, checkpoint, image, '--out-dir', str(tmp_path / 'out')])
    assert not (tmp_path / 'out').exists() or not list((tmp_path / 'out').iterdir())


def test_range_titles_tell_close_maps_apart_and_name_constant_maps():
    assert visualize.value_range(0.4987, 0.5013) == '0.4987-0.5013 (x385)'
    assert visualize.value_range(0.2, 0.7) == '0.20-0.70 (x2)'
    flat, title = visualize.spatial_panel(np.full((4, 4), 0.5, np.float32))
    assert title == 'Ms constant 0.5000' and np.all(flat == 0.5)  # not stretched
    ramp = np.linspace(0.499, 0.501, 16, dtype=np.float32).reshape(4, 4)
    stretched, title = visualize.spatial_panel(ramp)
    assert title.startswith('Ms 0.4990-0.5010') and stretched.min() == 0 and stretched.max() == 1


def test_channel_figure_shows_every_channel_and_mixed_widths():
    torch.manual_seed(0)
    wide = {'layer4': [(torch.rand(1, 2048, 1, 1), None) for _ in range(3)]}
    figure = visualize.channel_figure(wide)
    assert figure.shape[1] == 2048  # one pixel per channel
    row = figure[18 + 8, :, :].reshape(-1, 3)
    assert len(np.unique(row, axis=0)) > 200  # not 512 samples of 2048 channels: all of them
    mixed = {'layer1': [(torch.rand(1, 64, 1, 1), None), (torch.rand(1, 128, 1, 1), None)]}
    figure = visualize.channel_figure(mixed)
    assert figure.shape == (18 + 2 * visualize.CHANNEL_ROW_HEIGHT, 512, 3)


def test_a_crash_leaves_no_png_of_the_image(image, tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError('Grad-CAM failed')

    monkeypatch.setattr(visualize, 'gradcam_panel', crash)
    out = tmp_path / 'out'
    with pytest.raises(RuntimeError, match='Grad-CAM failed'):
        visualize.main([CBAM_CONFIG, image, '--out-dir', str(out)])
    assert list(out.iterdir()) == []
