"""mmdet's own analysis tools on our configs, run as docs/tools.md shows (`mim run mmdet ...`):
the loss curve of a short training run's log, and the training set drawn with its boxes."""
import glob
import os
import os.path as osp
import sys

import cv2
import numpy as np
import pytest
from mmengine.config import Config

from conftest import DEMO_CONFIG, TOOLS, data_options, run

MIM = [sys.executable, '-m', 'mim', 'run', 'mmdet']


@pytest.fixture(scope='module')
def tool_env():
    return dict(os.environ, MPLBACKEND='Agg')  # no display: matplotlib writes files only


@pytest.fixture(scope='module')
def training_log(synthetic, tmp_path_factory):
    work_dir = str(tmp_path_factory.mktemp('train'))
    run([sys.executable, osp.join(TOOLS, 'train.py'), DEMO_CONFIG, '--work-dir', work_dir] +
        data_options(synthetic, max_iters=2))
    (log, ) = glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json'))
    return log


def test_analyze_logs_plots_the_loss_curve(training_log, tool_env, tmp_path):
    out = str(tmp_path / 'loss.png')
    result = run(MIM + ['analyze_logs', 'plot_curve', training_log, '--keys', 'loss', 'loss_cls',
                        '--out', out], env=tool_env)
    assert 'metric is loss_cls' in result.stdout
    image = cv2.imread(out)
    assert image is not None and image.std() > 0  # a real plot, not a blank canvas


def test_analyze_logs_reports_the_iteration_time(training_log, tool_env):
    result = run(MIM + ['analyze_logs', 'cal_train_time', training_log], env=tool_env)
    assert 'average iter time' in result.stdout


def test_browse_dataset_draws_the_training_boxes(synthetic, tool_env, tmp_path):
    out_dir = tmp_path / 'browse'
    run(MIM + ['browse_dataset', DEMO_CONFIG, '--output-dir', str(out_dir), '--not-show'] +
        data_options(synthetic), env=tool_env)
    images = sorted(glob.glob(osp.join(synthetic, 'coco', 'train', '*.jpg')))
    drawn = sorted(out_dir.glob('*.jpg'))
    assert [path.name for path in drawn] == [osp.basename(path) for path in images]
    width, height = Config.fromfile(DEMO_CONFIG).image_scale  # the train pipeline's Resize
    for source, shown in zip(images, drawn):
        annotated = cv2.imread(str(shown))
        assert annotated.shape[:2] == (height, width)
        original = cv2.resize(cv2.imread(source), (width, height), interpolation=cv2.INTER_LINEAR)
        # The train pipeline also flips half the images. The boxes and labels change some pixels
        # a lot; the rest stays the image.
        changed = min(changed_pixels(annotated, view) for view in (original, original[:, ::-1]))
        assert 40 < changed < annotated.shape[0] * annotated.shape[1] / 2


def changed_pixels(image, reference):
    """How many pixels differ strongly (more than JPEG re-encoding changes them)."""
    difference = np.abs(image.astype(int) - reference.astype(int)).max(axis=2)
    return int((difference > 100).sum())
