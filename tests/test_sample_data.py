"""Sample data: layout, determinism, label values, and COCO annotations that match the pixels."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from components.contract import IGNORE_LABEL
from components.errors import InputError
from pipelines import sample_data


def _digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def semantic_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("semantic")
    summary = sample_data.write_semantic(out, num_images=20, image_size=96, seed=3)
    return out, summary


@pytest.fixture(scope="module")
def instance_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("instance")
    summary = sample_data.write_instance(out, num_images=30, image_size=128, seed=5)
    return out, summary


def test_semantic_layout_and_labels(semantic_dir):
    out, summary = semantic_dir
    train = (out / "ImageSets/Segmentation/train.txt").read_text().split()
    val = (out / "ImageSets/Segmentation/val.txt").read_text().split()
    assert summary["images"] == {"train": len(train), "val": len(val)}
    assert len(train) + len(val) == 20 and len(val) == 4 and not set(train) & set(val)
    names = (out / "class_names.txt").read_text().split()
    assert names[0] == "background" and 4 <= len(names) <= 6
    sizes = set()
    seen = set()
    for stem in train + val:
        image = Image.open(out / "JPEGImages" / f"{stem}.jpg")
        label = Image.open(out / "SegmentationClass" / f"{stem}.png")
        assert image.format == "JPEG" and image.mode == "RGB"
        assert label.mode == "P" and label.size == image.size
        assert label.getpalette()[:6] == [0, 0, 0, 128, 0, 0]  # VOC colour map
        values = np.asarray(label)
        assert set(np.unique(values)) <= set(range(len(names))) | {IGNORE_LABEL}
        seen |= set(np.unique(values).tolist())
        sizes.add(image.size)
        # The ignore band separates every object from its surroundings: no class pixel touches
        # a pixel of another class directly (4-neighbourhood).
        for a, b in ((values[1:], values[:-1]), (values[:, 1:], values[:, :-1])):
            differ = (a != b) & (a != IGNORE_LABEL) & (b != IGNORE_LABEL)
            assert not differ.any()
    assert seen == set(range(len(names))) | {IGNORE_LABEL}  # every class occurs
    assert len(sizes) > 5  # sizes vary so that resizing is exercised


def test_semantic_deterministic(semantic_dir, tmp_path):
    out, _ = semantic_dir
    sample_data.write_semantic(tmp_path, num_images=20, image_size=96, seed=3)
    assert _digest(tmp_path) == _digest(out)
    other = tmp_path / "other_seed"
    sample_data.write_semantic(other, num_images=20, image_size=96, seed=4)
    assert (other / "JPEGImages/000000.jpg").read_bytes() != (out / "JPEGImages/000000.jpg").read_bytes()


def test_each_class_is_painted_in_its_own_hue_band(semantic_dir):
    import colorsys

    out, _ = semantic_dir
    kinds = list(sample_data.SEMANTIC_CLASSES[1:])
    checked = 0
    for png in sorted((out / "SegmentationClass").glob("*.png")):
        label = np.asarray(Image.open(png))
        image = np.asarray(Image.open(out / "JPEGImages" / f"{png.stem}.jpg"), dtype=np.float64) / 255
        for class_id, kind in enumerate(kinds, start=1):
            pixels = image[label == class_id]
            if len(pixels) < 50:
                continue
            hue = colorsys.rgb_to_hsv(*np.median(pixels, axis=0))[0]
            distance = abs((hue - sample_data.class_hue(kind, kinds) + 0.5) % 1.0 - 0.5)
            assert distance < sample_data.HUE_JITTER + 0.04, (png.name, kind, hue)
            checked += 1
    assert checked >= 20


def test_instance_annotations_match_drawn_masks(instance_dir):
    out, summary = instance_dir
    category_ids = {c["id"] for c in sample_data.INSTANCE_CATEGORIES}
    assert category_ids != set(range(1, len(category_ids) + 1))  # non-contiguous on purpose
    total, crowd, multipart = 0, 0, 0
    for split in ("train", "val"):
        coco = COCO(str(out / "annotations" / f"instances_{split}.json"))
        assert {c["id"] for c in coco.dataset["categories"]} == category_ids
        assert len(coco.dataset["images"]) == summary["images"][split]
        for info in coco.dataset["images"]:
            index = info["id"] - 1
            image, objects = sample_data.render_instance(5, index, 128)
            on_disk = Image.open(out / "images" / info["file_name"])
            assert on_disk.size == image.size == (info["width"], info["height"])
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[info["id"]], iscrowd=None))
            assert [a["category_id"] for a in anns] == [o["category_id"] for o in objects]
            for ann, obj in zip(anns, objects):
                total += 1
                decoded = coco.annToMask(ann).astype(bool)
                if ann["iscrowd"]:
                    crowd += 1
                    assert isinstance(ann["segmentation"]["counts"], list)  # uncompressed RLE
                    assert np.array_equal(decoded, obj["visible"])
                else:
                    multipart += len(ann["segmentation"]) > 1
                    assert all(len(p) >= 6 and len(p) % 2 == 0 for p in ann["segmentation"])
                    iou = (decoded & obj["visible"]).sum() / (decoded | obj["visible"]).sum()
                    assert iou > 0.9, (info["file_name"], ann["id"], iou)
                assert ann["area"] == pytest.approx(decoded.sum())
                ys, xs = np.nonzero(decoded)
                assert ann["bbox"] == pytest.approx(
                    [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1], abs=0.01)
    assert total == sum(summary["annotations"].values())
    assert crowd == summary["crowd_regions"] and crowd >= 1
    assert total - crowd >= 2 * 30  # several instances per image


def test_mask_to_polygons_multipart_exact():
    mask = np.zeros((40, 50), dtype=bool)
    mask[5:20, 5:15] = True      # two separate parts
    mask[22:35, 20:45] = True
    mask[22:27, 10:20] = True    # an L-shaped extension of the second part
    polygons = sample_data.mask_to_polygons(mask, epsilon=0.0)
    assert len(polygons) == 2
    rle = mask_utils.merge(mask_utils.frPyObjects(polygons, 40, 50))
    assert np.array_equal(mask_utils.decode(rle).astype(bool), mask)


def test_instance_deterministic_through_write(instance_dir, tmp_path):
    out, summary = instance_dir
    result = sample_data.write("instance", str(tmp_path), num_images=30, image_size=128, seed=5)
    assert result["images"] == summary["images"] == {"train": 24, "val": 6}
    assert _digest(tmp_path) == _digest(out)
    json.loads((tmp_path / "annotations/instances_val.json").read_text())


def test_bad_arguments():
    with pytest.raises(InputError):
        sample_data.write_semantic("/nonexistent/never", num_images=1)
    with pytest.raises(InputError):
        sample_data.write_instance("/nonexistent/never", num_images=10, image_size=8)
    with pytest.raises(InputError, match="unknown task"):
        sample_data.write("panoptic", "/nonexistent/never")
