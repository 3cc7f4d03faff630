import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import TOOLS, load_tool
from mmdet.datasets import CocoDataset, VOCDataset
from mmdet.evaluation import CocoMetric, VOCMetric

TOOL = os.path.join(TOOLS, 'make_synthetic_dataset.py')
tool = load_tool('make_synthetic_dataset')

CLASSES = ('circle', 'square', 'triangle')
SIZE = 96
SMALL_ARGS = ['--num-train', '6', '--num-val', '3', '--size', str(SIZE)]
PIPELINE = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs'),
]


def generate(out_dir, *extra):
    assert tool.main([str(out_dir), *SMALL_ARGS, *extra]) == 0
    return out_dir


def read_tree(root):
    """{relative path: bytes} of every file under ``root``."""
    files = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, 'rb') as f:
                files[os.path.relpath(path, root)] = f.read()
    return files


@pytest.fixture(scope='module')
def dataset_dir(tmp_path_factory):
    return generate(tmp_path_factory.mktemp('synth') / 'data')


def coco_dataset(root, split):
    return CocoDataset(
        data_root=str(root / 'coco'), ann_file=f'annotations/instances_{split}.json',
        data_prefix=dict(img=f'{split}/'), metainfo=dict(classes=CLASSES), pipeline=PIPELINE,
        test_mode=False)


def voc_dataset(root, split):
    return VOCDataset(
        data_root=str(root / 'VOCdevkit'), ann_file=f'VOC2007/ImageSets/Main/{split}.txt',
        data_prefix=dict(sub_data_root='VOC2007/'), metainfo=dict(classes=CLASSES),
        pipeline=PIPELINE, test_mode=False)


def check_item(item):
    assert tuple(item['inputs'].shape) == (3, SIZE, SIZE)
    gt = item['data_samples'].gt_instances
    boxes, labels = gt.bboxes.tensor, gt.labels
    assert 1 <= len(boxes) <= 4 and len(labels) == len(boxes)
    assert (boxes >= 0).all() and (boxes <= SIZE).all()
    assert (boxes[:, 2:] > boxes[:, :2]).all()
    assert ((labels >= 0) & (labels < len(CLASSES))).all()


def test_layout_and_summary(tmp_path, capsys):
    root = generate(tmp_path / 'data')
    out = capsys.readouterr().out
    assert 'train: 6 images' in out and 'val: 3 images' in out
    assert (root / 'classes.txt').read_text().split() == list(CLASSES)

    sets = root / 'VOCdevkit' / 'VOC2007' / 'ImageSets' / 'Main'
    train, val, trainval, test = ((sets / f'{s}.txt').read_text().split()
                                  for s in ('train', 'val', 'trainval', 'test'))
    assert train == [f'train_{i:06d}' for i in range(1, 7)]
    assert val == [f'val_{i:06d}' for i in range(1, 4)]
    assert trainval == train + val and test == val

    files = read_tree(root)
    for split, ids in (('train', train), ('val', val)):
        for name in ids:
            image = files[f'coco/{split}/{name}.jpg']
            assert image[:2] == b'\xff\xd8'  # JPEG
            assert files[f'VOCdevkit/VOC2007/JPEGImages/{name}.jpg'] == image
            assert f'VOCdevkit/VOC2007/Annotations/{name}.xml' in files
        coco = json.loads(files[f'coco/annotations/instances_{split}.json'])
        assert [im['file_name'] for im in coco['images']] == [f'{n}.jpg' for n in ids]
        assert [c['name'] for c in coco['categories']] == list(CLASSES)
        assert [c['id'] for c in coco['categories']] == [1, 2, 3]
        for ann in coco['annotations']:
            x, y, w, h = ann['bbox']
            assert ann['area'] == pytest.approx(w * h) and ann['iscrowd'] == 0
            assert ann['segmentation'] == [[x, y, x + w, y, x + w, y + h, x, y + h]]
    # Nothing but the dataset next to it: the temporary directory was renamed away.
    assert os.listdir(tmp_path) == ['data']


@pytest.mark.parametrize('split, length', [('train', 6), ('val', 3)])
def test_mmdet_coco_dataset_loads_it(dataset_dir, split, length):
    dataset = coco_dataset(dataset_dir, split)
    assert len(dataset) == length
    check_item(dataset[0])
    check_item(dataset[length - 1])


def test_coco_metric_gives_perfect_map_for_the_ground_truth(dataset_dir):
    dataset = coco_dataset(dataset_dir, 'val')
    metric = CocoMetric(
        ann_file=str(dataset_dir / 'coco' / 'annotations' / 'instances_val.json'), metric='bbox')
    metric.dataset_meta = dict(classes=CLASSES)
    samples = []
    for i in range(len(dataset)):
        info = dataset.get_data_info(i)
        boxes = torch.tensor([inst['bbox'] for inst in info['instances']], dtype=torch.float32)
        labels = torch.tensor([inst['bbox_label'] for inst in info['instances']])
        samples.append(dict(
            img_id=info['img_id'], ori_shape=(info['height'], info['width']),
            pred_instances=dict(bboxes=boxes, scores=torch.ones(len(boxes)), labels=labels)))
    metric.process(data_batch={}, data_samples=samples)
    results = metric.compute_metrics(metric.results)
    assert results['bbox_mAP'] >= 0.99
    assert results['bbox_mAP_50'] >= 0.99


def test_voc_dataset_and_metric(dataset_dir):
    dataset = voc_dataset(dataset_dir, 'train')
    assert len(dataset) == 6
    assert dataset.metainfo['dataset_type'] == 'VOC2007'
    assert len(voc_dataset(dataset_dir, 'trainval')) == 9

    # The VOC boxes are the COCO boxes: mmdet subtracts 1 from all four 1-based VOC
    # coordinates, so its x2/y2 come out one less than COCO's exclusive right/bottom edge.
    coco = json.loads((dataset_dir / 'coco' / 'annotations' / 'instances_train.json').read_text())
    coco_boxes = {}
    for ann in coco['annotations']:
        x, y, w, h = ann['bbox']
        coco_boxes.setdefault(ann['image_id'], []).append(
            ([x, y, x + w - 1, y + h - 1], ann['category_id'] - 1))

    metric = VOCMetric(metric='mAP', eval_mode='11points')
    metric.dataset_meta = dataset.metainfo
    samples = []
    for i in range(len(dataset)):
        item = dataset[i]
        check_item(item)
        gt = item['data_samples'].gt_instances
        assert [(b, int(l)) for b, l in zip(gt.bboxes.tensor.tolist(), gt.labels)] \
            == coco_boxes[i + 1]
        samples.append(dict(
            gt_instances=dict(bboxes=gt.bboxes.tensor, labels=gt.labels),
            ignored_instances=dict(bboxes=torch.zeros(0, 4), labels=torch.zeros(0).long()),
            pred_instances=dict(bboxes=gt.bboxes.tensor, scores=torch.ones(len(gt)),
                                labels=gt.labels)))
    metric.process(data_batch={}, data_samples=samples)
    assert metric.compute_metrics(metric.results)['mAP'] >= 0.99


def test_same_arguments_give_identical_files(dataset_dir, tmp_path):
    reference = read_tree(dataset_dir)
    assert read_tree(generate(tmp_path / 'again')) == reference

    other_seed = read_tree(generate(tmp_path / 'seed1', '--seed', '1'))
    assert other_seed.keys() == reference.keys()
    assert all(other_seed[p] != reference[p] for p in reference if p.endswith('.jpg'))

    # Each image has its own random stream: fewer val images leave the train split alone.
    fewer_val = read_tree(generate(tmp_path / 'fewer_val', '--num-val', '1'))
    train_files = [p for p in reference if os.path.basename(p).startswith('train_')]
    assert len(train_files) == 6 * 3  # coco image, VOC image, VOC xml
    train_files += ['coco/annotations/instances_train.json',
                    'VOCdevkit/VOC2007/ImageSets/Main/train.txt']
    assert all(fewer_val[p] == reference[p] for p in train_files)


def test_rendered_objects():
    seen = set()
    for index in range(1, 21):
        image, boxes, labels = tool.render_image(tool.image_rng(0, 'train', index), SIZE)
        assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
        assert 1 <= len(boxes) <= 4 and boxes.shape == (len(labels), 4)
        assert (boxes >= 0).all() and (boxes <= SIZE).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all()
        # Objects are at least 12% of the image side across (a rotated square or triangle more).
        assert (boxes[:, 2:] - boxes[:, :2]).max(axis=1).min() >= 0.12 * SIZE - 1
        seen.update(labels.tolist())
    assert seen == {0, 1, 2}


@pytest.mark.parametrize('option, value', [
    ('--size', '32'), ('--size', '63'), ('--size', '2049'), ('--size', '4096'),
    ('--num-train', '0'), ('--num-val', '0'), ('--num-val', '-1'), ('--seed', '-1')])
def test_bad_arguments_are_refused(tmp_path, capsys, option, value):
    with pytest.raises(SystemExit) as exc:
        tool.main([str(tmp_path / 'data'), option, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f'{option} must be' in err and f'got {value}' in err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize('option, value', [('--size', '256.0'), ('--num-train', 'ten'),
                                           ('--seed', '')])
def test_non_integer_arguments_are_refused(tmp_path, capsys, option, value):
    with pytest.raises(SystemExit) as exc:
        tool.main([str(tmp_path / 'data'), option, value])
    assert exc.value.code == 2
    assert f'argument {option}: invalid int value: {value!r}' in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_boundary_sizes_are_accepted(tmp_path):
    assert tool.parse_args([str(tmp_path / 'a'), '--size', '64']).size == 64
    assert tool.parse_args([str(tmp_path / 'b'), '--size', '2048']).size == 2048
    assert os.listdir(tmp_path) == []


def refused(capsys, *argv):
    """Run the tool in-process, expect argparse's refusal, return its message."""
    with pytest.raises(SystemExit) as exc:
        tool.main([*argv, *SMALL_ARGS])
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_own_dataset_is_replaced_only_with_overwrite(tmp_path, capsys):
    out = generate(tmp_path / 'data', '--seed', '1')
    before = read_tree(out)
    assert 'already exists and is not empty; pass --overwrite' in refused(capsys, str(out))
    assert read_tree(out) == before

    generate(out, '--overwrite', '--num-val', '1')
    after = read_tree(out)
    assert after != before and 'coco/val/val_000002.jpg' not in after
    assert os.listdir(tmp_path) == ['data']


@pytest.mark.parametrize('foreign', [
    'keep.txt', 'coco/notes.txt', 'coco/train/train_000001.png', 'coco/train/val_000001.jpg',
    'VOCdevkit/VOC2012/Annotations/a.xml', 'VOCdevkit/VOC2007/ImageSets/Main/mine.txt',
    'checkpoints/model.pth'])
def test_directory_with_foreign_files_is_never_replaced(tmp_path, capsys, foreign):
    out = generate(tmp_path / 'data')
    path = out / foreign
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('precious')
    before = read_tree(out)
    for extra in ([], ['--overwrite']):
        err = refused(capsys, str(out), *extra)
        assert 'holds files this tool did not write' in err
        assert foreign.split('/')[0] in err and 'choose a new directory' in err
    assert read_tree(out) == before and os.listdir(tmp_path) == ['data']


def test_symlink_inside_the_dataset_is_foreign(tmp_path, capsys):
    out = generate(tmp_path / 'data')
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    (elsewhere / 'precious.txt').write_text('precious')
    os.symlink(elsewhere, out / 'coco' / 'extra')
    assert 'coco/extra/' in refused(capsys, str(out), '--overwrite')
    assert (elsewhere / 'precious.txt').read_text() == 'precious'
    assert (out / 'coco' / 'extra').is_symlink()


def test_out_dir_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / 'data').write_text('precious')
    assert 'exists and is not a directory' in refused(capsys, str(tmp_path / 'data'),
                                                      '--overwrite')
    assert (tmp_path / 'data').read_text() == 'precious'


def test_symlinked_out_dir_replaces_the_dataset_it_points_to(tmp_path):
    real = generate(tmp_path / 'real', '--seed', '1')
    link = tmp_path / 'link'
    os.symlink(real, link)
    generate(link, '--overwrite')
    assert link.is_symlink() and os.path.realpath(link) == str(real)
    assert read_tree(real) == read_tree(generate(tmp_path / 'fresh'))


@pytest.fixture
def populated_cwd(tmp_path, monkeypatch):
    """A working directory deep inside tmp_path holding a marker file, with a marker in each
    parent up to tmp_path / 'a'; returns the markers."""
    cwd = tmp_path / 'a' / 'b' / 'work'
    cwd.mkdir(parents=True)
    markers = [cwd / 'marker.txt', tmp_path / 'a' / 'b' / 'marker.txt',
               tmp_path / 'a' / 'marker.txt']
    for marker in markers:
        marker.write_text('precious')
    monkeypatch.chdir(cwd)
    return markers


def check_markers(markers):
    assert all(marker.read_text() == 'precious' for marker in markers)


@pytest.mark.parametrize('overwrite', [False, True])
def test_empty_out_dir_is_refused_in_a_subprocess(populated_cwd, overwrite):
    # The command that once replaced a whole repository: an empty OUT_DIR from its root.
    result = subprocess.run(
        [sys.executable, os.path.abspath(TOOL), '', *SMALL_ARGS,
         *(['--overwrite'] if overwrite else [])],
        cwd=populated_cwd[0].parent, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert 'OUT_DIR is empty' in result.stderr
    check_markers(populated_cwd)
    assert os.listdir(populated_cwd[0].parent) == ['marker.txt']


@pytest.mark.parametrize('out_dir', ['', '  ', '.', './', '..', '../..', 'sub/../..',
                                     'link_to_cwd', 'link_to_parent', 'CWD', 'PARENT'])
def test_current_directory_and_its_parents_are_refused(populated_cwd, capsys, out_dir):
    cwd = populated_cwd[0].parent
    os.symlink(cwd, cwd / 'link_to_cwd')
    os.symlink(cwd.parent.parent, cwd / 'link_to_parent')
    out_dir = dict(CWD=str(cwd), PARENT=str(cwd.parent)).get(out_dir, out_dir)
    err = refused(capsys, out_dir, '--overwrite')
    assert ('OUT_DIR is empty' in err if not out_dir.strip()
            else 'is the current directory or one of its parents' in err)
    check_markers(populated_cwd)
    assert sorted(os.listdir(cwd)) == ['link_to_cwd', 'link_to_parent', 'marker.txt']


def test_new_directory_below_the_current_one_is_fine(populated_cwd):
    generate('data')
    assert os.path.isfile('data/classes.txt')
    check_markers(populated_cwd)


def test_empty_existing_output_is_used(tmp_path):
    (tmp_path / 'data').mkdir()
    assert (generate(tmp_path / 'data') / 'classes.txt').exists()
    assert os.listdir(tmp_path) == ['data']


def fail(*args, **kwargs):
    raise OSError('disk full')


@pytest.mark.parametrize('target', ['cv2.imwrite', 'json.dump'])
def test_failure_while_writing_leaves_nothing_behind(tmp_path, monkeypatch, target):
    module, name = target.split('.')
    monkeypatch.setattr(getattr(tool, module), name, fail)
    with pytest.raises(OSError, match='disk full'):
        tool.main([str(tmp_path / 'data'), *SMALL_ARGS])
    assert os.listdir(tmp_path) == []


def test_failed_overwrite_keeps_the_old_dataset(tmp_path, monkeypatch):
    out = generate(tmp_path / 'data', '--seed', '1')
    before = read_tree(out)
    monkeypatch.setattr(tool.json, 'dump', fail)
    with pytest.raises(OSError, match='disk full'):
        tool.main([str(out), *SMALL_ARGS, '--overwrite'])
    assert os.listdir(tmp_path) == ['data'] and read_tree(out) == before
