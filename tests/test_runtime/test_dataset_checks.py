"""Dataset checks: every broken annotation or image file gives one clear error."""
import json
import shutil

import pytest
from mmengine.config import Config

from cbam_mmdet.runtime.dataset_checks import DatasetError, check_datasets
from cbam_mmdet.runtime.ranks import is_first_process
from conftest import load_tool

CLASSES = ('circle', 'square', 'triangle')


@pytest.fixture(scope='module')
def pristine(tmp_path_factory):
    tool = load_tool('make_synthetic_dataset')
    out = tmp_path_factory.mktemp('pristine') / 'synthetic'
    assert tool.main([str(out), '--num-train', '5', '--num-val', '2', '--size', '64']) == 0
    return out


@pytest.fixture
def data(pristine, tmp_path):
    """A private copy of the synthetic dataset, free to break."""
    return shutil.copytree(pristine, tmp_path / 'synthetic')


def coco_cfg(root, split='train', **kwargs):
    return dict(dict(type='CocoDataset', data_root=f'{root}/coco/',
                     ann_file=f'annotations/instances_{split}.json',
                     data_prefix=dict(img=f'{split}/'), metainfo=dict(classes=CLASSES),
                     filter_cfg=dict(filter_empty_gt=True, min_size=8), pipeline=[]), **kwargs)


def voc_cfg(root, split='train', **kwargs):
    return dict(dict(type='VOCDataset', data_root=f'{root}/VOCdevkit/',
                     ann_file=f'VOC2007/ImageSets/Main/{split}.txt',
                     data_prefix=dict(sub_data_root='VOC2007/'), metainfo=dict(classes=CLASSES),
                     filter_cfg=dict(filter_empty_gt=True, min_size=8), pipeline=[]), **kwargs)


def check(dataset, split='train'):
    return check_datasets(Config({f'{split}_dataloader': dict(dataset=dataset)}), (split, ))


def refused(dataset, *expected, split='train'):
    with pytest.raises(DatasetError) as exc:
        check(dataset, split)
    message = str(exc.value)
    for text in expected:
        assert text in message, message
    assert '--no-dataset-check' in message
    return message


def edit_json(path, change):
    coco = json.loads(path.read_text())
    change(coco)
    path.write_text(json.dumps(coco))


def coco_ann(data, split='train'):
    return data / 'coco' / 'annotations' / f'instances_{split}.json'


def voc_xml(data, name='train_000001'):
    return data / 'VOCdevkit' / 'VOC2007' / 'Annotations' / f'{name}.xml'


# ---------------------------------------------------------------------------------------- COCO


def test_good_coco_and_voc_datasets_pass(pristine):
    coco_line, = check(coco_cfg(pristine))
    assert coco_line.startswith('train: CocoDataset') and '5 images, 5 used' in coco_line
    voc_line, = check(voc_cfg(pristine))
    assert voc_line.startswith('train: VOCDataset') and '5 images, 5 used' in voc_line


def test_missing_coco_annotation_file(data):
    coco_ann(data).unlink()
    refused(coco_cfg(data), f'annotation file {coco_ann(data)} does not exist',
            'Check data_root and ann_file')


def test_voc_image_set_list_in_a_coco_config_is_named_as_such(data):
    image_set = data / 'VOCdevkit' / 'VOC2007' / 'ImageSets' / 'Main' / 'train.txt'
    message = refused(coco_cfg(data, ann_file=str(image_set)),
                      f'annotation file {image_set} is a VOC image-set list',
                      'this is a COCO-style dataset (CocoDataset)', 'Use a VOC config')
    assert 'not valid JSON' not in message


def test_truncated_coco_json_gives_the_position(data):
    text = coco_ann(data).read_text()
    coco_ann(data).write_text(text[:200])
    refused(coco_cfg(data), f'annotation file {coco_ann(data)} is not valid JSON',
            '(line 1, column ', 'of a 200-byte file', 'download or extract it again')


def test_results_file_instead_of_annotations(data):
    coco_ann(data).write_text('[{"image_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5}]')
    refused(coco_cfg(data), 'holds a JSON list, not a COCO annotation object')


@pytest.mark.parametrize('section', ['images', 'annotations', 'categories'])
def test_missing_coco_section(data, section):
    edit_json(coco_ann(data), lambda coco: coco.pop(section))
    refused(coco_cfg(data), f"has no '{section}' list", 'not a COCO instances file')


@pytest.mark.parametrize('section, key', [('images', 'file_name'), ('images', 'height'),
                                          ('annotations', 'bbox'),
                                          ('annotations', 'category_id'),
                                          ('categories', 'name')])
def test_coco_entries_without_the_keys_mmdet_reads(data, section, key):
    edit_json(coco_ann(data), lambda coco: coco[section][0].pop(key))
    refused(coco_cfg(data), f"1 entries of '{section}' in {coco_ann(data)} lack keys mmdet reads",
            '#0 ', f'lacks {key}')


def test_coco_box_that_is_not_four_numbers(data):
    edit_json(coco_ann(data), lambda coco: coco['annotations'][1].update(bbox=[1, 2, 3]))
    refused(coco_cfg(data), 'have a bbox that is not 4 numbers', '#1 bbox=[1, 2, 3]')


def test_coco_without_images(data):
    edit_json(coco_ann(data), lambda coco: coco.update(images=[], annotations=[]))
    refused(coco_cfg(data), 'lists no images')


def test_classes_that_are_no_coco_category(data):
    message = refused(coco_cfg(data, metainfo=dict(classes=('person', 'car', 'circle'))),
                      '2 of the 3 classes of the config are no category',
                      "'person', 'car'", "its categories: 'circle', 'square', 'triangle'",
                      'metainfo=dict(classes=(...))')
    assert "'circle' ..." not in message


def test_filter_that_removes_every_coco_image(data):
    refused(coco_cfg(data, filter_cfg=dict(filter_empty_gt=True, min_size=100)),
            'removes all 5 images', 'min_size=100')
    edit_json(coco_ann(data), lambda coco: coco.update(annotations=[]))
    refused(coco_cfg(data), 'removes all 5 images',
            'no image has an object of the classes (filter_empty_gt=True)')
    # The same file is fine for validation: no filter in test mode.
    assert '5 images, 5 used' in check(coco_cfg(data, test_mode=True), 'val')[0]


def test_missing_empty_and_unreadable_coco_images(data):
    images = data / 'coco' / 'train'
    (images / 'train_000001.jpg').unlink()
    (images / 'train_000002.jpg').write_bytes(b'')
    (images / 'train_000003.jpg').write_text('<html>Not Found</html>')
    refused(coco_cfg(data),
            f'1 of 5 images listed in {coco_ann(data)} are missing: '
            f'{images}/train_000001.jpg. Check data_root and data_prefix',
            f'1 image files are empty (0 bytes): {images}/train_000002.jpg',
            f"1 image files are not readable images: {images}/train_000003.jpg "
            f"(starts with b'<html>No')")


def test_coco_images_without_objects_are_fine(data):
    """Images without objects: filtered for training (some stay), kept for validation."""
    edit_json(coco_ann(data), lambda coco: coco.update(
        annotations=[a for a in coco['annotations'] if a['image_id'] > 2]))
    assert '5 images, 3 used' in check(coco_cfg(data))[0]
    assert '5 images, 5 used' in check(coco_cfg(data, filter_cfg=None))[0]


# ----------------------------------------------------------------------------------------- VOC


def test_missing_and_empty_voc_image_set(data):
    image_set = data / 'VOCdevkit' / 'VOC2007' / 'ImageSets' / 'Main' / 'train.txt'
    image_set.write_text('\n')
    refused(voc_cfg(data), f'image-set list {image_set} lists no images')
    image_set.unlink()
    refused(voc_cfg(data), f'image-set list {image_set} does not exist')


def test_missing_and_unparsable_voc_xml(data):
    voc_xml(data).unlink()
    text = voc_xml(data, 'train_000002').read_text()
    voc_xml(data, 'train_000002').write_text(text[:len(text) // 2])
    refused(voc_cfg(data),
            f'1 annotation files do not exist: {voc_xml(data)}. Check data_prefix',
            f'1 annotation files are not valid XML: {voc_xml(data, "train_000002")} (',
            'line ')


@pytest.mark.parametrize('old, new, expected', [
    ('<width>64</width>', '<width>64.5</width>', 'a <size> without integer <width> and <height>'),
    ('<height>64</height>', '', 'a <size> without integer <width> and <height>'),
    ('<name>', '<label>', 'an object without <name>'),
    ('<xmin>', '<xmin>left', 'an object without numeric <bndbox>'),
    ('<bndbox>', '<box>', 'an object without numeric <bndbox>'),
])
def test_malformed_voc_xml(data, old, new, expected):
    text = voc_xml(data).read_text()
    new_text = text.replace(old, new, 1).replace(old.replace('<', '</'),
                                                 new.replace('<', '</'), 1)
    assert new_text != text
    voc_xml(data).write_text(new_text)
    refused(voc_cfg(data), expected, str(voc_xml(data)), 'Fix or regenerate them')


def test_voc_classes_matching_no_object(data):
    refused(voc_cfg(data, metainfo=dict(classes=('aeroplane', 'bicycle'))),
            "no object in the annotations", "of the config's classes ('aeroplane', 'bicycle')",
            "their names: 'circle', 'square', 'triangle'")


def test_missing_voc_image(data):
    image = data / 'VOCdevkit' / 'VOC2007' / 'JPEGImages' / 'train_000004.jpg'
    image.unlink()
    refused(voc_cfg(data), '1 of 5 images listed in', f'are missing: {image}')


def test_voc_images_without_objects_are_fine(data):
    for name in ('train_000001', 'train_000002'):
        text = voc_xml(data, name).read_text()
        voc_xml(data, name).write_text(text[:text.index('<object>')] + '</annotation>\n')
    assert '5 images, 3 used' in check(voc_cfg(data))[0]


# ------------------------------------------------------------------------ wrappers and splits


def test_wrapped_datasets_are_all_checked(data):
    coco_ann(data, 'val').unlink()
    wrapped = dict(type='RepeatDataset', times=2, dataset=dict(
        type='ConcatDataset', datasets=[coco_cfg(data), coco_cfg(data, 'val')]))
    refused(wrapped, f'annotation file {coco_ann(data, "val")} does not exist')
    ok = dict(type='ConcatDataset', datasets=[coco_cfg(data), voc_cfg(data)])
    assert [line.split()[1] for line in check(ok)] == ['CocoDataset', 'VOCDataset']


def test_val_split_is_checked_only_with_a_val_loop(data):
    coco_ann(data, 'val').unlink()
    cfg = Config(dict(val_dataloader=dict(dataset=coco_cfg(data, 'val', test_mode=True)),
                      val_cfg=None))
    assert check_datasets(cfg, ('train', 'val')) == []
    cfg.val_cfg = dict(type='ValLoop')
    with pytest.raises(DatasetError, match='does not exist'):
        check_datasets(cfg, ('train', 'val'))


def test_other_dataset_types_and_remote_files_are_skipped(data):
    line, = check(dict(type='CrowdHumanDataset', data_root='nowhere', ann_file='x.odgt'))
    assert line == 'train: CrowdHumanDataset: not a COCO- or VOC-style dataset, not checked'
    line, = check(coco_cfg(data, data_root='s3://bucket/coco/'))
    assert line == 'train: CocoDataset: not on local storage, not checked'


@pytest.mark.parametrize('launcher, env, first', [
    ('none', dict(RANK='3'), True), ('pytorch', dict(RANK='0', LOCAL_RANK='0'), True),
    ('pytorch', dict(RANK='1', LOCAL_RANK='1'), False),
    ('pytorch', dict(RANK='2', LOCAL_RANK='0'), False),  # second machine's first process
    ('pytorch', dict(LOCAL_RANK='1'), False), ('slurm', dict(SLURM_PROCID='4'), False),
    ('pytorch', {}, True)])
def test_only_the_first_process_checks(monkeypatch, launcher, env, first):
    for name in ('RANK', 'LOCAL_RANK', 'SLURM_PROCID', 'OMPI_COMM_WORLD_RANK'):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert is_first_process(launcher) is first
