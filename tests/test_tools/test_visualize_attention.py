import os.path as osp

import cv2
import numpy as np
import pytest
from mmengine.config import Config
from mmengine.runner import save_checkpoint

from conftest import REPO_ROOT, load_tool
from mmdet.registry import MODELS

visualize = load_tool('visualize_attention')

DEMO = osp.join(REPO_ROOT, 'configs', 'demo')
CBAM_CONFIG = osp.join(DEMO, 'faster-rcnn_r18-cbam_fpn_300i_synthetic.py')
BASELINE_CONFIG = osp.join(DEMO, 'faster-rcnn_r18_fpn_300i_synthetic.py')


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
