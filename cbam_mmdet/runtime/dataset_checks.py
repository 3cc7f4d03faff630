"""Check a config's datasets on disk before training or testing starts.

mmdet reads annotation files when the Runner builds its dataloaders, and images only when a batch
needs them: a bad file surfaces as a bare ``JSONDecodeError``, ``KeyError: 'categories'``,
``ParseError``, ``AttributeError: 'NoneType' object has no attribute 'text'`` or ``need at least
one array to concatenate`` from deep inside mmengine, or hours into a run. :func:`check_datasets`
reads the annotation files of the COCO- and VOC-style datasets of a config (through dataset
wrappers such as ``RepeatDataset`` and ``ConcatDataset``) and checks every image file cheaply
(it exists, is not empty, starts like an image), and raises :class:`DatasetError` listing every
problem with the file and the fix. Datasets of other types and non-local storage are skipped.
"""
import inspect
import json
import os
import os.path as osp
import re
import time
import xml.etree.ElementTree as ET
from typing import Dict, List, Mapping, Optional, Sequence

from mmengine.fileio import list_from_file

# The first bytes of the image formats OpenCV reads (JPEG, PNG, BMP, GIF, TIFF, WebP, ...).
IMAGE_SIGNATURES = (b'\xff\xd8\xff', b'\x89PNG\r\n\x1a\n', b'BM', b'GIF87a', b'GIF89a',
                    b'II*\x00', b'MM\x00*', b'RIFF', b'P1', b'P2', b'P3', b'P4', b'P5', b'P6',
                    b'\x00\x00\x00\x0cjP  ', b'\xff\x0a')
SKIP_HINT = 'skip this check with --no-dataset-check'
# Keys of COCO entries that mmdet's CocoDataset (and pycocotools' index) read.
COCO_IMAGE_KEYS = ('id', 'file_name', 'width', 'height')
COCO_ANNOTATION_KEYS = ('id', 'image_id', 'bbox', 'area', 'category_id')
COCO_CATEGORY_KEYS = ('id', 'name')
EXAMPLES = 3
# A line of a VOC image-set list: an image id (e.g. 000005, 2008_000123), maybe a class flag.
IMAGE_SET_LINE = re.compile(r'[\w.-]+(\s+-?[01])?')


class DatasetError(ValueError):
    """A dataset that cannot be used as configured; the message lists the files and fixes."""


def check_datasets(cfg: Mapping, splits: Sequence[str]) -> List[str]:
    """Check the datasets of ``cfg.{split}_dataloader`` for each split ('train', 'val', 'test').

    Returns one summary line per checked dataset; raises :class:`DatasetError` on problems.
    """
    summaries = []
    for split in splits:
        loader = cfg.get(f'{split}_dataloader')
        if not loader or not loader.get('dataset'):
            continue
        if split != 'train' and cfg.get(f'{split}_cfg', {}) is None:
            continue  # mmengine builds no loop (and reads no data) for this split
        for dataset_cfg in leaf_datasets(loader['dataset']):
            summaries.append(check_dataset(dataset_cfg, split))
    return summaries


def leaf_datasets(dataset_cfg: Mapping) -> List[Mapping]:
    """The datasets inside any nesting of wrappers (``dataset=``, ``datasets=[...]``)."""
    if 'datasets' in dataset_cfg:
        return [leaf for ds in dataset_cfg['datasets'] for leaf in leaf_datasets(ds)]
    if 'dataset' in dataset_cfg:
        return leaf_datasets(dataset_cfg['dataset'])
    return [dataset_cfg]


def check_dataset(dataset_cfg: Mapping, split: str) -> str:
    """Check one (unwrapped) dataset config; return a summary line."""
    from mmdet.datasets import CocoDataset, XMLDataset
    from mmdet.registry import DATASETS

    dataset_type = dataset_cfg.get('type')
    cls = dataset_type if isinstance(dataset_type, type) else DATASETS.get(dataset_type)
    name = getattr(cls, '__name__', str(dataset_type))
    if cls is None or not issubclass(cls, (CocoDataset, XMLDataset)):
        return f'{split}: {name}: not a COCO- or VOC-style dataset, not checked'
    files = DatasetFiles(dataset_cfg, cls, split)
    if not files.local:
        return f'{split}: {name}: not on local storage, not checked'
    start = time.perf_counter()
    checker = CocoCheck if issubclass(cls, CocoDataset) else VOCCheck
    problems = checker(files).run()
    where = f'the {split} dataset ({name}, ann_file={files.ann_file})'
    if problems.lines:
        raise DatasetError(f'{where} cannot be used:\n' + '\n'.join(
            f'  - {line}' for line in problems.lines) + f'\n({SKIP_HINT})')
    return (f'{split}: {name} {files.ann_file}: {problems.num_images} images, '
            f'{problems.num_kept} used, checked in {time.perf_counter() - start:.1f} s')


class DatasetFiles:
    """The paths a dataset config resolves to, joined as mmengine's ``BaseDataset`` joins them."""

    def __init__(self, cfg: Mapping, cls: type, split: str):
        self.cfg = cfg
        self.split = split
        self.dataset_type = cls.__name__
        data_root = cfg.get('data_root') or ''
        self.local = not any('://' in str(p) for p in (data_root, cfg.get('ann_file', '')))
        self.ann_file = self.join(data_root, cfg.get('ann_file') or '')
        self.prefixes = {key: self.join(data_root, value)
                         for key, value in (cfg.get('data_prefix') or {}).items()
                         if isinstance(value, str)}
        self.test_mode = bool(cfg.get('test_mode', False))
        self.filter_cfg = None if self.test_mode else cfg.get('filter_cfg')
        metainfo = cfg.get('metainfo') or {}
        self.classes = tuple(metainfo.get('classes') or cls.METAINFO.get('classes', ()))

    @staticmethod
    def join(root: str, path: str) -> str:
        return path if not root or osp.isabs(path) else osp.join(root, path)


class Problems:
    """Problems of one dataset, grouped: each kind becomes one line with a few examples."""

    def __init__(self):
        self.lines: List[str] = []
        self.num_images = self.num_kept = 0

    def add(self, line: str) -> None:
        self.lines.append(line)

    def add_examples(self, what: str, examples: Sequence[str], fix: str) -> None:
        if examples:
            shown = '; '.join(examples[:EXAMPLES])
            more = f' (+{len(examples) - EXAMPLES} more)' if len(examples) > EXAMPLES else ''
            self.add(f'{len(examples)} {what}: {shown}{more}. {fix}')


def check_image_files(paths: Sequence[str], problems: Problems, listed_in: str) -> None:
    """Every image exists, is not empty and starts with the signature of an image format."""
    missing, empty, not_images = [], [], []
    for path in paths:
        try:
            size = os.stat(path).st_size
        except OSError:
            missing.append(path)
            continue
        if size == 0:
            empty.append(path)
            continue
        try:
            with open(path, 'rb') as f:
                head = f.read(16)
        except OSError as err:
            not_images.append(f'{path} (cannot be read: {err.strerror})')
            continue
        if not head.startswith(IMAGE_SIGNATURES):
            not_images.append(f'{path} (starts with {head[:8]!r})')
    problems.add_examples(
        f'of {len(paths)} images listed in {listed_in} are missing', missing,
        'Check data_root and data_prefix in the config, or copy the images there.')
    problems.add_examples('image files are empty (0 bytes)', empty,
                          'Copy or extract them again.')
    problems.add_examples('image files are not readable images', not_images,
                          'Replace them with the original images.')


class CocoCheck:
    """A COCO instances file as mmdet's ``CocoDataset`` reads it, and its images."""

    def __init__(self, files: DatasetFiles):
        self.files = files
        self.problems = Problems()

    def run(self) -> Problems:
        ann_file = self.files.ann_file
        coco = self.load(ann_file)
        if coco is not None:
            self.check_content(coco, ann_file)
        return self.problems

    def load(self, ann_file: str) -> Optional[dict]:
        add = self.problems.add
        if not osp.isfile(ann_file):
            add(f'annotation file {ann_file} does not exist. Check data_root and ann_file in '
                f'the config (e.g. --cfg-options '
                f'{self.files.split}_dataloader.dataset.data_root=...).')
            return None
        try:
            with open(ann_file, 'rb') as f:
                coco = json.load(f)
        except json.JSONDecodeError as err:
            if is_image_set_list(ann_file):
                add(image_set_problem(ann_file, self.files))
                return None
            size = osp.getsize(ann_file)
            add(f'annotation file {ann_file} is not valid JSON: {err.msg} (line {err.lineno}, '
                f'column {err.colno}; character {err.pos} of a {size}-byte file). It is damaged '
                f'or truncated: download or extract it again.')
            return None
        except (OSError, UnicodeDecodeError) as err:
            add(f'annotation file {ann_file} cannot be read: {err}.')
            return None
        if not isinstance(coco, dict):
            if is_image_set_list(ann_file):
                add(image_set_problem(ann_file, self.files))
                return None
            add(f'annotation file {ann_file} holds a JSON {type(coco).__name__}, not a COCO '
                f'annotation object (a results file?). Use an instances_*.json file.')
            return None
        absent = [key for key in ('images', 'annotations', 'categories')
                  if not isinstance(coco.get(key), list)]
        if absent:
            add(f'annotation file {ann_file} has no {" / ".join(map(repr, absent))} list (its '
                f'keys: {", ".join(map(repr, coco)) or "none"}): not a COCO instances file. Use '
                f'an instances_*.json file (captions and results files do not hold boxes).')
            return None
        return coco

    def check_content(self, coco: dict, ann_file: str) -> None:
        problems = self.problems
        entries_ok = True
        for section, keys in (('images', COCO_IMAGE_KEYS), ('annotations', COCO_ANNOTATION_KEYS),
                              ('categories', COCO_CATEGORY_KEYS)):
            required = set(keys)
            bad = [f'#{i} {json.dumps(e)[:80]} lacks {", ".join(k for k in keys if k not in e)}'
                   if isinstance(e, dict) else f'#{i} is a {type(e).__name__}'
                   for i, e in enumerate(coco[section])
                   if not isinstance(e, dict) or not required <= e.keys()]
            problems.add_examples(
                f'entries of {section!r} in {ann_file} lack keys mmdet reads ({", ".join(keys)})',
                bad, 'Fix or regenerate the annotation file.')
            entries_ok &= not bad
        bad_boxes = [f'#{i} bbox={a["bbox"]!r}' for i, a in enumerate(coco['annotations'])
                     if isinstance(a, dict) and 'bbox' in a and not is_box(a['bbox'])]
        problems.add_examples(f'entries of \'annotations\' in {ann_file} have a bbox that is not '
                              f'4 numbers [x, y, w, h]', bad_boxes,
                              'Fix or regenerate the annotation file.')
        images = coco['images']
        problems.num_images = len(images)
        if not images:
            problems.add(f'annotation file {ann_file} lists no images. Use the file of a '
                         f'non-empty split.')
        if not entries_ok or bad_boxes or not images:
            return

        names = [c['name'] for c in coco['categories']]
        unknown = [c for c in self.files.classes if c not in names]
        if unknown:
            problems.add(
                f'{len(unknown)} of the {len(self.files.classes)} classes of the config are no '
                f'category of {ann_file}: {", ".join(map(repr, unknown[:5]))}'
                f'{" ..." if len(unknown) > 5 else ""} (its categories: '
                f'{", ".join(map(repr, names[:10]))}{" ..." if len(names) > 10 else ""}). Set '
                f'metainfo=dict(classes=(...)) in the dataset config to category names.')
            return
        class_ids = {c['id'] for c in coco['categories'] if c['name'] in self.files.classes}
        with_objects = {a['image_id'] for a in coco['annotations']
                        if a['category_id'] in class_ids}
        self.check_filter([(im['id'] in with_objects, im['width'], im['height'])
                           for im in images], ann_file)
        prefix = self.files.prefixes.get('img', '')
        check_image_files([osp.join(prefix, im['file_name']) for im in images], problems,
                          ann_file)

    def check_filter(self, images, ann_file: str) -> None:
        """``images``: (has objects of the classes, width, height) per image."""
        self.problems.num_kept = len(images)
        cfg = self.files.filter_cfg
        if not cfg:
            return
        filter_empty = cfg.get('filter_empty_gt', False)
        min_size = cfg.get('min_size', 0)
        kept = [1 for has_objects, w, h in images
                if (has_objects or not filter_empty) and large_enough(w, h, min_size)]
        self.problems.num_kept = len(kept)
        if not kept:
            why = []
            if filter_empty and not any(has for has, _, _ in images):
                why.append('no image has an object of the classes (filter_empty_gt=True)')
            if not any(large_enough(w, h, min_size) for _, w, h in images):
                why.append(f'no image is at least {min_size} pixels on its short side '
                           f'(min_size={min_size})')
            self.problems.add(
                f'filter_cfg={dict(cfg)} removes all {len(images)} images of {ann_file}: '
                f'{"; ".join(why) or "see filter_cfg"}. Check the classes and filter_cfg.')


def is_image_set_list(path: str) -> bool:
    """Whether ``path`` is a VOC image-set list (``ImageSets/Main/*.txt``): one image id per
    line, optionally followed by a 1 / 0 / -1 class flag."""
    try:
        with open(path, encoding='utf-8') as f:
            lines = [line.strip() for line in f.read(1 << 20).splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError):
        return False
    return bool(lines) and all(IMAGE_SET_LINE.fullmatch(line) for line in lines)


def image_set_problem(ann_file: str, files: 'DatasetFiles') -> str:
    return (f'annotation file {ann_file} is a VOC image-set list (one image id per line), but '
            f'this is a COCO-style dataset ({files.dataset_type}), which reads a COCO '
            f'instances JSON. Use a VOC config (VOCDataset, data_root with VOC2007/...) for '
            f'VOC data, or point ann_file at an instances_*.json file.')


def large_enough(width: Optional[int], height: Optional[int], min_size: int) -> bool:
    """mmdet's ``min_size`` filter; an unknown size (VOC without <size>) is not judged here."""
    return width is None or min(width, height) >= min_size


def is_box(value) -> bool:
    """Four JSON numbers (not booleans); exact type checks, as this runs once per box."""
    return type(value) is list and len(value) == 4 and all(type(v) in (int, float) for v in value)


class VOCCheck(CocoCheck):
    """A VOC image-set list, its XML annotations as mmdet's ``XMLDataset`` reads them, and the
    images."""
    FIX = 'Fix or regenerate them.'

    def __init__(self, files: DatasetFiles):
        super().__init__(files)
        self.sub_data_root = files.prefixes.get('sub_data_root', '')
        from mmdet.datasets import XMLDataset  # subclasses (VOCDataset) take **kwargs
        defaults = inspect.signature(XMLDataset.__init__).parameters
        self.img_subdir = files.cfg.get('img_subdir', defaults['img_subdir'].default)
        self.ann_subdir = files.cfg.get('ann_subdir', defaults['ann_subdir'].default)
        self.bad_xml: Dict[str, List[str]] = {}

    def run(self) -> Problems:
        ann_file = self.files.ann_file
        if not osp.isfile(ann_file):
            self.problems.add(
                f'image-set list {ann_file} does not exist. Check data_root and ann_file in the '
                f'config (VOC: ann_file=\'VOC2007/ImageSets/Main/trainval.txt\').')
            return self.problems
        ids = [i.strip() for i in list_from_file(ann_file) if i.strip()]
        self.problems.num_images = len(ids)
        if not ids:
            self.problems.add(f'image-set list {ann_file} lists no images. Use the list of a '
                              f'non-empty split.')
            return self.problems
        images = [self.check_xml(image_id) for image_id in ids]
        for what, examples in self.bad_xml.items():
            fix = ('Check data_prefix=dict(sub_data_root=...) and the list.'
                   if what == 'annotation files do not exist' else self.FIX)
            self.problems.add_examples(what, examples, fix)
        if self.problems.lines:
            return self.problems
        classes = set(self.files.classes)
        names = {name for objects, _, _ in images for name in objects}
        if names and not names & classes:
            self.problems.add(
                f'no object in the annotations of {ann_file} is of the config\'s classes '
                f'({", ".join(map(repr, self.files.classes[:5]))}'
                f'{" ..." if len(classes) > 5 else ""}); their names: '
                f'{", ".join(map(repr, sorted(names)[:10]))}. Set metainfo=dict(classes=(...)) '
                f'in the dataset config to these names.')
            return self.problems
        self.check_filter([(bool(set(objects) & classes), w, h) for objects, w, h in images],
                          ann_file)
        check_image_files([osp.join(self.sub_data_root, self.img_subdir, f'{i}.jpg')
                           for i in ids], self.problems, ann_file)
        return self.problems

    def check_xml(self, image_id: str):
        """(object names, width, height) of one annotation file (width and height None without
        <size>: mmdet then reads them from the image); problems go to ``self.bad_xml``."""
        path = osp.join(self.sub_data_root, self.ann_subdir, f'{image_id}.xml')
        try:
            root = ET.parse(path).getroot()
        except FileNotFoundError:
            return self.bad('annotation files do not exist', path)
        except ET.ParseError as err:
            return self.bad('annotation files are not valid XML', f'{path} ({err})')
        width = height = None
        size = root.find('size')
        if size is not None:
            try:
                width, height = (int(size.find(tag).text) for tag in ('width', 'height'))
            except (AttributeError, TypeError, ValueError):
                return self.bad('annotation files have a <size> without integer <width> and '
                                '<height>', path)
        names = []
        for index, obj in enumerate(root.findall('object')):
            name = obj.findtext('name')
            if not name:
                return self.bad('annotation files have an object without <name>',
                                f'{path} (object #{index})')
            box = obj.find('bndbox')
            try:
                [float(box.find(tag).text) for tag in ('xmin', 'ymin', 'xmax', 'ymax')]
            except (AttributeError, TypeError, ValueError):
                return self.bad('annotation files have an object without numeric <bndbox> '
                                'xmin, ymin, xmax, ymax', f'{path} (object #{index}, {name!r})')
            names.append(name)
        return names, width, height

    def bad(self, what: str, example: str):
        self.bad_xml.setdefault(what, []).append(example)
        return [], None, None
