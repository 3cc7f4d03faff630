"""Write a small, deterministic synthetic object-detection dataset in COCO and VOC layouts.

    python tools/make_synthetic_dataset.py OUT_DIR [--seed 0] [--num-train 300] [--num-val 60]
                                           [--size 256] [--overwrite]

Each image is a ``size x size`` JPEG (quality 95) showing 1 to 4 objects of the classes
``circle``, ``square`` and ``triangle`` (varied size, colour and rotation, possibly overlapping)
on a cluttered background: a colour gradient, thin lines, small irregular blobs and noise. The
same seed and arguments give byte-identical files; every image has its own random stream, so
changing ``--num-val`` leaves the train images as they were (and vice versa).

Layout (both layouts hold the same images)::

    OUT_DIR/
        classes.txt                         one class per line
        coco/
            train/train_000001.jpg ...
            val/val_000001.jpg ...
            annotations/instances_train.json
            annotations/instances_val.json
        VOCdevkit/VOC2007/
            JPEGImages/train_000001.jpg ... val_000001.jpg ...
            Annotations/train_000001.xml ...
            ImageSets/Main/train.txt, val.txt, trainval.txt (train + val), test.txt (= val)

COCO boxes are ``[x, y, w, h]`` in float pixels, tight around the shape's pixels (the shape's
right/bottom edge is ``x + w`` / ``y + h``); VOC boxes are the same boxes as 1-based inclusive
integer pixel coordinates. The dataset is written into a temporary sibling of OUT_DIR and renamed
into place at the end, so OUT_DIR is either complete or absent.

The tool only ever replaces its own datasets: it refuses an empty OUT_DIR, the current directory or
any of its parents (however spelled: ``..``, symlinks), and an existing directory holding anything
it does not write (anything but ``classes.txt``, ``coco/`` and ``VOCdevkit/`` in the layout above),
with or without ``--overwrite``.
"""
import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import xml.etree.ElementTree as ET
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import cv2
import numpy as np

CLASSES = ('circle', 'square', 'triangle')
SPLITS = ('train', 'val')
MAX_OBJECTS = 4
# Object extent (circle diameter, square/triangle side) as a fraction of the image side.
MIN_OBJECT_FRAC, MAX_OBJECT_FRAC = 0.12, 0.45
# An object of which less than this fraction would stay visible is left out of the image.
MIN_VISIBLE_FRAC = 0.4
MIN_COLOUR_DISTANCE = 90.0
JPEG_QUALITY = 95
SIZE_RANGE = (64, 2048)

# Everything the tool writes into OUT_DIR (relative paths, '/'-separated): an existing OUT_DIR
# holding anything else is not one of its datasets and is never replaced.
OWN_DIRS = frozenset({
    'coco', 'coco/train', 'coco/val', 'coco/annotations', 'VOCdevkit', 'VOCdevkit/VOC2007',
    'VOCdevkit/VOC2007/JPEGImages', 'VOCdevkit/VOC2007/Annotations',
    'VOCdevkit/VOC2007/ImageSets', 'VOCdevkit/VOC2007/ImageSets/Main'})
OWN_FILES = re.compile(
    r'classes\.txt'
    r'|coco/(train|val)/\1_\d+\.jpg'
    r'|coco/annotations/instances_(train|val)\.json'
    r'|VOCdevkit/VOC2007/JPEGImages/(train|val)_\d+\.jpg'
    r'|VOCdevkit/VOC2007/Annotations/(train|val)_\d+\.xml'
    r'|VOCdevkit/VOC2007/ImageSets/Main/(train|val|trainval|test)\.txt')


class ImageRecord(NamedTuple):
    name: str  # file name without extension, unique across splits
    size: int
    boxes: np.ndarray  # (N, 4) float xyxy, pixels
    labels: np.ndarray  # (N, ) int index into CLASSES


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLITS.index(split), index])


def shape_mask(rng: np.random.Generator, label: int, size: int) -> np.ndarray:
    """A filled ``label`` shape at a random place, size and rotation, entirely inside the image."""
    extent = rng.uniform(MIN_OBJECT_FRAC, MAX_OBJECT_FRAC) * size
    mask = np.zeros((size, size), np.uint8)
    if CLASSES[label] == 'circle':
        radius = int(round(extent / 2))
        cx, cy = rng.integers(radius, size - radius, size=2)
        cv2.circle(mask, (int(cx), int(cy)), radius, 1, thickness=-1)
        return mask
    if CLASSES[label] == 'square':
        n_vertices, circumradius = 4, extent / np.sqrt(2)
    else:
        n_vertices, circumradius = 3, extent / np.sqrt(3)
    cx, cy = rng.uniform(circumradius, size - 1 - circumradius, size=2)
    angles = rng.uniform(0, 2 * np.pi) + np.arange(n_vertices) * 2 * np.pi / n_vertices
    vertices = np.stack([cx + circumradius * np.cos(angles), cy + circumradius * np.sin(angles)],
                        axis=1)
    cv2.fillPoly(mask, [np.round(vertices).astype(np.int32)], 1)
    return mask


def cluttered_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random linear colour gradient with thin lines and small irregular blobs on it."""
    start, end = rng.uniform(0, 255, size=(2, 3))
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    t = xx * np.cos(angle) + yy * np.sin(angle)
    t = (t - t.min()) / (t.max() - t.min())
    image = (start + (end - start) * t[..., None]).astype(np.uint8)
    for _ in range(rng.integers(3, 10)):
        p1, p2 = rng.integers(0, size, size=(2, 2))
        cv2.line(image, tuple(map(int, p1)), tuple(map(int, p2)),
                 tuple(map(int, rng.integers(0, 256, size=3))), int(rng.integers(1, 3)),
                 cv2.LINE_AA)
    # Ragged star-like blobs, smaller than any object and with too many uneven spikes to pass
    # for a circle, square or triangle.
    for _ in range(rng.integers(2, 8)):
        n_vertices = int(rng.integers(7, 13))
        angles = (np.arange(n_vertices) + rng.uniform(-0.3, 0.3, size=n_vertices)) \
            * 2 * np.pi / n_vertices
        radii = rng.uniform(0.35, 1.0, size=n_vertices) * rng.uniform(0.015, 0.05) * size
        centre = rng.uniform(0, size, size=2)
        vertices = centre + np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
        cv2.fillPoly(image, [np.round(vertices).astype(np.int32)],
                     tuple(map(int, rng.integers(0, 256, size=3))), cv2.LINE_AA)
    return image


def contrasting_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A random colour far from the mean colour of ``under`` (N, 3) if a few draws find one."""
    mean = under.mean(axis=0)
    for _ in range(20):
        colour = rng.integers(0, 256, size=3)
        if np.linalg.norm(colour - mean) >= MIN_COLOUR_DISTANCE:
            break
    return colour


def render_image(rng: np.random.Generator, size: int
                 ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one image: ``(image (size, size, 3) uint8 BGR, boxes (N, 4) float xyxy,
    labels (N, ))`` with 1 <= N <= 4.

    Shapes are stacked in drawing order. Going from the top one down, a shape that the shapes
    kept above it would hide for more than ``1 - MIN_VISIBLE_FRAC`` of its area is dropped
    (never drawn), so every drawn shape is annotated; its box is that of the whole shape,
    including any partly hidden part.
    """
    image = cluttered_background(rng, size)
    labels = rng.integers(0, len(CLASSES), size=rng.integers(1, MAX_OBJECTS + 1))
    masks = [shape_mask(rng, int(label), size).astype(bool) for label in labels]

    keep = []
    covered = np.zeros((size, size), bool)
    for i in reversed(range(len(masks))):
        if (masks[i] & ~covered).sum() >= MIN_VISIBLE_FRAC * masks[i].sum():
            keep.append(i)
            covered |= masks[i]
    keep.reverse()

    boxes = []
    for i in keep:
        image[masks[i]] = contrasting_colour(rng, image[masks[i]])
        ys, xs = np.nonzero(masks[i])
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    noise = rng.normal(0, rng.uniform(3, 12), size=image.shape)
    image = np.clip(image + noise, 0, 255).astype(np.uint8)
    return image, np.array(boxes, np.float64).reshape(-1, 4), labels[keep].astype(np.int64)


def coco_dict(records: Sequence[ImageRecord], split: str) -> dict:
    images, annotations = [], []
    for image_id, record in enumerate(records, start=1):
        images.append(dict(id=image_id, file_name=f'{record.name}.jpg', width=record.size,
                           height=record.size))
        for (x1, y1, x2, y2), label in zip(record.boxes.tolist(), record.labels.tolist()):
            w, h = x2 - x1, y2 - y1
            annotations.append(dict(
                id=len(annotations) + 1, image_id=image_id, category_id=label + 1,
                bbox=[x1, y1, w, h], area=w * h, iscrowd=0,
                segmentation=[[x1, y1, x2, y1, x2, y2, x1, y2]]))
    return dict(
        info=dict(description=f'synthetic shapes ({split})', version='1.0'),
        licenses=[],
        images=images,
        annotations=annotations,
        categories=[dict(id=i, name=name, supercategory='shape')
                    for i, name in enumerate(CLASSES, start=1)])


def write_coco(coco_dir: str, split: str, records: Sequence[ImageRecord]) -> None:
    ann_dir = os.path.join(coco_dir, 'annotations')
    os.makedirs(ann_dir, exist_ok=True)
    with open(os.path.join(ann_dir, f'instances_{split}.json'), 'w') as f:
        json.dump(coco_dict(records, split), f)


def voc_xml(record: ImageRecord) -> ET.ElementTree:
    root = ET.Element('annotation')
    ET.SubElement(root, 'folder').text = 'VOC2007'
    ET.SubElement(root, 'filename').text = f'{record.name}.jpg'
    size = ET.SubElement(root, 'size')
    for tag, value in (('width', record.size), ('height', record.size), ('depth', 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(root, 'segmented').text = '0'
    for (x1, y1, x2, y2), label in zip(record.boxes.tolist(), record.labels.tolist()):
        obj = ET.SubElement(root, 'object')
        for tag, value in (('name', CLASSES[label]), ('pose', 'Unspecified'),
                           ('truncated', 0), ('difficult', 0)):
            ET.SubElement(obj, tag).text = str(value)
        bndbox = ET.SubElement(obj, 'bndbox')
        # Pixel columns x1 .. x2 - 1 (0-based) are VOC's x1 + 1 .. x2 (1-based, inclusive).
        for tag, value in (('xmin', x1 + 1), ('ymin', y1 + 1), ('xmax', x2), ('ymax', y2)):
            ET.SubElement(bndbox, tag).text = str(int(value))
    tree = ET.ElementTree(root)
    ET.indent(tree)
    return tree


def write_voc(voc_dir: str, splits: Dict[str, Sequence[ImageRecord]]) -> None:
    """Annotations and ImageSets for the VOC layout (the images are written by the caller)."""
    ann_dir = os.path.join(voc_dir, 'Annotations')
    sets_dir = os.path.join(voc_dir, 'ImageSets', 'Main')
    os.makedirs(ann_dir, exist_ok=True)
    os.makedirs(sets_dir, exist_ok=True)
    for records in splits.values():
        for record in records:
            voc_xml(record).write(os.path.join(ann_dir, f'{record.name}.xml'), encoding='utf-8')
    names = {split: [record.name for record in records] for split, records in splits.items()}
    image_sets = dict(train=names['train'], val=names['val'],
                      trainval=names['train'] + names['val'], test=names['val'])
    for set_name, ids in image_sets.items():
        with open(os.path.join(sets_dir, f'{set_name}.txt'), 'w') as f:
            f.write(''.join(f'{i}\n' for i in ids))


def generate(out_dir: str, seed: int, counts: Dict[str, int], size: int) -> None:
    """Write the whole dataset into ``out_dir`` (which must exist)."""
    voc_dir = os.path.join(out_dir, 'VOCdevkit', 'VOC2007')
    voc_images = os.path.join(voc_dir, 'JPEGImages')
    os.makedirs(voc_images)
    splits: Dict[str, List[ImageRecord]] = {}
    for split, count in counts.items():
        coco_images = os.path.join(out_dir, 'coco', split)
        os.makedirs(coco_images)
        records = []
        for index in range(1, count + 1):
            name = f'{split}_{index:06d}'
            image, boxes, labels = render_image(image_rng(seed, split, index), size)
            path = os.path.join(coco_images, f'{name}.jpg')
            if not cv2.imwrite(path, image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
                raise OSError(f'cannot write {path}')
            shutil.copyfile(path, os.path.join(voc_images, f'{name}.jpg'))
            records.append(ImageRecord(name, size, boxes, labels))
        write_coco(os.path.join(out_dir, 'coco'), split, records)
        splits[split] = records
        print(f'{split}: {len(records)} images, '
              f'{sum(len(r.labels) for r in records)} objects')
    write_voc(voc_dir, splits)
    with open(os.path.join(out_dir, 'classes.txt'), 'w') as f:
        f.write(''.join(f'{name}\n' for name in CLASSES))


def move_into_place(tmp_dir: str, out_dir: str) -> None:
    """Rename ``tmp_dir`` to ``out_dir``, replacing an existing ``out_dir``."""
    if not os.path.exists(out_dir):
        os.rename(tmp_dir, out_dir)
        return
    parent, base = os.path.split(out_dir)
    old_dir = tempfile.mkdtemp(prefix=f'{base}.old-', dir=parent)
    os.rename(out_dir, os.path.join(old_dir, base))
    try:
        os.rename(tmp_dir, out_dir)
    except BaseException:
        os.rename(os.path.join(old_dir, base), out_dir)
        raise
    finally:
        shutil.rmtree(old_dir, ignore_errors=True)


def foreign_entries(out_dir: str) -> List[str]:
    """Relative paths of everything under ``out_dir`` that this tool does not write (symlinks
    included, whatever they point to), sorted; a foreign directory is listed, not entered."""
    foreign = []
    for dirpath, dirnames, filenames in os.walk(out_dir):
        rel_dir = os.path.relpath(dirpath, out_dir)
        for name in list(dirnames):
            rel = name if rel_dir == '.' else f'{rel_dir}/{name}'
            if rel not in OWN_DIRS or os.path.islink(os.path.join(dirpath, name)):
                foreign.append(f'{rel}/')
                dirnames.remove(name)
        for name in filenames:
            rel = name if rel_dir == '.' else f'{rel_dir}/{name}'
            if not OWN_FILES.fullmatch(rel) or os.path.islink(os.path.join(dirpath, name)):
                foreign.append(rel)
    return sorted(foreign)


def check_out_dir(parser: argparse.ArgumentParser, out_dir: str, overwrite: bool) -> str:
    """Refuse an ``out_dir`` the tool must not replace; return its resolved absolute path."""
    if not out_dir.strip():
        parser.error('OUT_DIR is empty; give the directory to create, e.g. data/synthetic')
    resolved = os.path.realpath(out_dir)
    cwd = os.path.realpath(os.getcwd())
    if os.path.commonpath([resolved, cwd]) == resolved:
        parser.error(f'OUT_DIR {out_dir!r} is the current directory or one of its parents '
                     f'({resolved}); give a new directory for the dataset, e.g. data/synthetic')
    if not os.path.lexists(resolved):
        return resolved
    if not os.path.isdir(resolved):
        parser.error(f'OUT_DIR {out_dir} exists and is not a directory')
    foreign = foreign_entries(resolved)
    if foreign:
        shown = ', '.join(foreign[:5]) + (f' and {len(foreign) - 5} more'
                                          if len(foreign) > 5 else '')
        parser.error(f'OUT_DIR {out_dir} holds files this tool did not write ({shown}); it only '
                     f'replaces its own datasets (classes.txt, coco/, VOCdevkit/), even with '
                     f'--overwrite: choose a new directory')
    if os.listdir(resolved) and not overwrite:
        parser.error(f'OUT_DIR {out_dir} already exists and is not empty; '
                     f'pass --overwrite to replace it')
    return resolved


def add_dataset_args(parser: argparse.ArgumentParser, num_train: int, num_val: int,
                     size: int) -> None:
    """The options this tool shares with tools/make_synthetic_imagenet.py, with their defaults."""
    parser.add_argument('out_dir', metavar='OUT_DIR', help='directory to create')
    parser.add_argument('--seed', type=int, default=0, help='random seed (>= 0, default 0)')
    parser.add_argument('--num-train', type=int, default=num_train,
                        help=f'number of train images (>= 1, default {num_train})')
    parser.add_argument('--num-val', type=int, default=num_val,
                        help=f'number of val images (>= 1, default {num_val})')
    parser.add_argument('--size', type=int, default=size,
                        help=f'image side in pixels ({SIZE_RANGE[0]}..{SIZE_RANGE[1]}, '
                             f'default {size})')


def check_dataset_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse values of the ``add_dataset_args`` options out of range."""
    for option, value, minimum in (('--seed', args.seed, 0), ('--num-train', args.num_train, 1),
                                   ('--num-val', args.num_val, 1)):
        if value < minimum:
            parser.error(f'{option} must be >= {minimum}, got {value}')
    if not SIZE_RANGE[0] <= args.size <= SIZE_RANGE[1]:
        parser.error(f'--size must be between {SIZE_RANGE[0]} and {SIZE_RANGE[1]}, '
                     f'got {args.size}')


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Write a deterministic synthetic detection dataset (circle, square, '
                    'triangle) in COCO and PASCAL VOC layouts.')
    add_dataset_args(parser, num_train=300, num_val=60, size=256)
    parser.add_argument('--overwrite', action='store_true',
                        help='replace OUT_DIR if it holds a dataset written by this tool')
    args = parser.parse_args(argv)
    check_dataset_args(parser, args)
    args.out_dir = check_out_dir(parser, args.out_dir, args.overwrite)
    return args


def write_dataset(args: argparse.Namespace,
                  generate_into: Callable[[str, int, Dict[str, int], int], None]) -> None:
    """Write a dataset of the ``add_dataset_args`` options ``args`` with ``generate_into(dir,
    seed, counts, size)`` into a new temporary sibling of ``args.out_dir`` and rename it to
    ``args.out_dir`` (replacing it); on any error remove it, so OUT_DIR is complete or untouched.
    """
    out_dir = args.out_dir
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=f'{os.path.basename(out_dir)}.tmp-', dir=parent)
    try:
        # mkdtemp makes the directory private (0o700); give OUT_DIR the usual permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_dir, 0o777 & ~umask)
        generate_into(tmp_dir, args.seed, dict(train=args.num_train, val=args.num_val), args.size)
        move_into_place(tmp_dir, out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    print(f'wrote {out_dir}')


def main(argv: Optional[Sequence[str]] = None) -> int:
    write_dataset(parse_args(argv), generate)
    return 0


if __name__ == '__main__':
    sys.exit(main())
