"""tools/test.py: checkpoints of another model are refused, and mmdet's --show, --show-dir,
--wait-time and --tta work, on synthetic COCO."""
import glob
import os.path as osp

import pytest
from mmengine.config import Config
from mmengine.runner import save_checkpoint

from cbam_mmdet.runtime.checkpoints import CheckpointError
from conftest import DEMO_CONFIG, REPO_ROOT, data_options, load_tool
from mmdet.registry import MODELS

test_tool = load_tool('test')
BASELINE_CONFIG = osp.join(REPO_ROOT, 'configs', 'demo', 'faster-rcnn_r18_fpn_200i_synthetic.py')
CLASSES = ('circle', 'square', 'triangle')


def checkpoint_of(config, path, **cfg_options):
    cfg = Config.fromfile(config)
    cfg.merge_from_dict(cfg_options)
    model = MODELS.build(cfg.model)
    model.init_weights()
    save_checkpoint({'state_dict': model.state_dict(),
                     'meta': dict(dataset_meta=dict(classes=CLASSES))}, str(path))
    return str(path)


@pytest.fixture(scope='module')
def cbam_checkpoint(tmp_path_factory):
    return checkpoint_of(DEMO_CONFIG, tmp_path_factory.mktemp('ckpt') / 'cbam.pth')


def run_test_tool(checkpoint, synthetic, work_dir, *options):
    return test_tool.main([DEMO_CONFIG, checkpoint, '--work-dir', str(work_dir), *options]
                          + data_options(synthetic))


def test_a_checkpoint_of_another_model_is_refused_before_testing(synthetic, tmp_path):
    baseline = checkpoint_of(BASELINE_CONFIG, tmp_path / 'baseline.pth')
    metrics_file = tmp_path / 'metrics.json'
    with pytest.raises(CheckpointError) as error:
        run_test_tool(baseline, synthetic, tmp_path / 'work', '--metrics-json', str(metrics_file))
    message = str(error.value)
    assert f'checkpoint {baseline}: does not fit the model of {DEMO_CONFIG}' in message
    assert 'missing 72 keys: backbone.layer1.0.cbam.' in message and '--allow-mismatch' in message
    assert not metrics_file.exists()
    # mmdet's lenient loading on request
    metrics = run_test_tool(baseline, synthetic, tmp_path / 'lenient', '--allow-mismatch')
    assert 'coco/bbox_mAP' in metrics


def test_other_shapes_are_named(synthetic, tmp_path):
    five_classes = checkpoint_of(DEMO_CONFIG, tmp_path / 'five.pth',
                                 **{'model.roi_head.bbox_head.num_classes': 5})
    with pytest.raises(CheckpointError, match=r'other tensor shapes for 4 keys: '
                       r'roi_head\.bbox_head\.fc_cls\.weight: \(6, 512\) in the checkpoint, '
                       r'\(4, 512\) in the model'):
        run_test_tool(five_classes, synthetic, tmp_path)


def test_show_dir_paints_every_test_image(cbam_checkpoint, synthetic, tmp_path):
    metrics = run_test_tool(cbam_checkpoint, synthetic, tmp_path, '--show-dir', 'painted')
    assert 'coco/bbox_mAP' in metrics
    # mmdet's meaning: inside the run's timestamped directory under work_dir
    painted = glob.glob(str(tmp_path / '*' / 'painted' / '*.jpg'))
    images = glob.glob(osp.join(synthetic, 'coco', 'val', '*.jpg'))
    assert len(painted) == len(images) == 4


def test_show_turns_on_the_visualization_hook_with_the_wait_time(cbam_checkpoint, tmp_path):
    args = test_tool.parse_args([DEMO_CONFIG, cbam_checkpoint, '--work-dir', str(tmp_path),
                                 '--show', '--wait-time', '0.5'])
    hook = test_tool.build_config(args).default_hooks.visualization
    assert hook.draw and hook.show and hook.wait_time == 0.5
    args = test_tool.parse_args([DEMO_CONFIG, cbam_checkpoint, '--show-dir', 'x', '--cfg-options',
                                 'default_hooks.visualization=None'])
    with pytest.raises(ValueError, match='need a VisualizationHook in default_hooks'):
        test_tool.build_config(args)


def test_tta_wraps_the_model_and_flips(cbam_checkpoint, synthetic, tmp_path):
    args = test_tool.parse_args([DEMO_CONFIG, cbam_checkpoint, '--tta'])
    with pytest.warns(UserWarning, match='no tta_pipeline'):
        cfg = test_tool.build_config(args)
    assert cfg.model.type == 'DetTTAModel' and cfg.model.module.backbone.type == 'CBAMResNet'
    augment = cfg.test_dataloader.dataset.pipeline[-1]
    assert augment.type == 'TestTimeAug' and [t.prob for t in augment.transforms[0]] == [1., 0.]
    with pytest.warns(UserWarning):
        metrics = run_test_tool(cbam_checkpoint, synthetic, tmp_path, '--tta')
    assert 'coco/bbox_mAP' in metrics
