"""VOC ingestion on real data: class maps equal the source palette PNGs pixel for pixel."""
import argparse
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LABELME_SEM = DATA / "labelme" / "semantic_segmentation" / "data_dataset_voc"
LABELME_INST = DATA / "labelme" / "instance_segmentation" / "data_dataset_voc"
CAMVID = DATA / "camvid-voc"
IN_PROCESS = ["--direct_running_mode=in_memory"]


def _need(path: Path):
    if not path.is_dir():
        pytest.skip(f"real data absent: {path} (see ../shared/data/SOURCES.md)")


def _ingest(out, root, class_names=None):
    from components import ingest

    args = argparse.Namespace(format="voc", root=str(root), class_names=class_names, out=str(out),
                              split=None, num_shards=0, max_bad_fraction=0.05,
                              runner="DirectRunner", beam_arg=IN_PROCESS)
    return ingest.cli_main(args)


def _examples(split_dir: Path) -> dict[str, dict]:
    from components.example_codec import parse_example
    from trainer_module.metrics.coco_eval import example_files, read_serialized

    parsed = [parse_example(s) for s in read_serialized(example_files(str(split_dir)))]
    return {ex["image/source_id"][0].decode(): ex for ex in parsed}


def _check_class_maps(examples: dict, root: Path):
    from components.example_codec import decode_png

    for stem, ex in examples.items():
        assert ex["image/encoded"][0] == (root / "JPEGImages" / f"{stem}.jpg").read_bytes()
        assert ex["image/filename"] == [f"JPEGImages/{stem}.jpg".encode()]
        assert ex["image/segmentation/class/format"] == [b"png"]
        png = ex["image/segmentation/class/encoded"][0]
        assert Image.open(io.BytesIO(png)).mode == "L"  # class ids, not a palette
        source = np.asarray(Image.open(root / "SegmentationClass" / f"{stem}.png"))
        np.testing.assert_array_equal(decode_png(png), source)
        assert (ex["image/height"][0], ex["image/width"][0]) == source.shape


def test_labelme_voc_semantic(tmp_path):
    _need(LABELME_SEM)
    from components.example_codec import CLASS_MAP_KEYS, IMAGE_KEYS

    summary = _ingest(tmp_path / "out", LABELME_SEM)
    assert summary["images"] == 3 and summary["quarantined"] == 0 and summary["instances"] == 0
    assert set(summary["examples"]) == {"train", "val"}  # no lists: hash split
    examples = {}
    for split in summary["examples"]:
        examples.update(_examples(tmp_path / "out" / f"Split-{split}"))
    assert sorted(examples) == ["2011_000003", "2011_000006", "2011_000025"]
    for ex in examples.values():
        assert set(ex) == set(IMAGE_KEYS + CLASS_MAP_KEYS)
    _check_class_maps(examples, LABELME_SEM)
    label_map = json.loads((tmp_path / "out" / "label_map.json").read_text())
    names = (LABELME_SEM / "class_names.txt").read_text().split("\n")
    assert [c["name"] for c in label_map["classes"]] == [n for n in names if n]
    assert [c["label"] for c in label_map["classes"]] == list(range(21))


def test_camvid_splits_from_lists(tmp_path):
    _need(CAMVID)
    summary = _ingest(tmp_path / "out", CAMVID)
    assert summary["examples"] == {"train": 367, "val": 101}
    assert summary["images"] == 468 and summary["quarantined"] == 0
    assert summary["num_classes"] == 11
    for split in ("train", "val"):
        examples = _examples(tmp_path / "out" / f"Split-{split}")
        listed = (CAMVID / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
        assert sorted(examples) == sorted(listed)
        _check_class_maps(examples, CAMVID)


def _write_xml(path: Path, stem: str, objects: list[tuple[str, tuple]]):
    parts = [f"<annotation><filename>{stem}.jpg</filename>"]
    for name, (x0, y0, x1, y1) in objects:  # VOC boxes: 1-based, inclusive
        parts.append(f"<object><name>{name}</name><bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}"
                     f"</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>")
    path.write_text("".join(parts) + "</annotation>")


def test_voc_instances_from_segmentation_object_and_xml(tmp_path):
    """SegmentationObject + Annotations XML give instance masks, boxes and labels."""
    _need(LABELME_INST)
    from components.example_codec import decode_png

    root = tmp_path / "voc"
    shutil.copytree(LABELME_INST, root)
    (root / "Annotations").mkdir()
    names = [n for n in (root / "class_names.txt").read_text().split("\n") if n]
    expected = {}
    for png in sorted((root / "SegmentationObject").glob("*.png")):
        objects_img = np.asarray(Image.open(png))
        classes = np.asarray(Image.open(root / "SegmentationClass" / png.name))
        objects = []
        for index in range(1, int(objects_img[objects_img != 255].max()) + 1):
            mask = objects_img == index
            if not mask.any():  # an XML object without pixels (labelme skips index 6 once)
                objects.append(("person", (0, 0, 5, 5)))
                continue
            cls = int(np.bincount(classes[mask]).argmax())
            ys, xs = np.nonzero(mask)
            box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
            objects.append((names[cls], box))
            expected.setdefault(png.stem, []).append((mask.astype(np.uint8), cls, box))
        _write_xml(root / "Annotations" / f"{png.stem}.xml", png.stem, objects)

    summary = _ingest(tmp_path / "out", root)
    total = sum(len(v) for v in expected.values())
    assert summary["instances"] == total > 0 and summary["quarantined"] == 0
    assert summary["dropped_annotations"] == {"empty mask": 1}
    examples = {}
    for split in summary["examples"]:
        examples.update(_examples(tmp_path / "out" / f"Split-{split}"))
    for stem, objects in expected.items():
        ex = examples[stem]
        h, w = ex["image/height"][0], ex["image/width"][0]
        assert len(ex["image/object/mask"]) == len(objects)
        for i, (mask, cls, (x0, y0, x1, y1)) in enumerate(objects):
            np.testing.assert_array_equal(decode_png(ex["image/object/mask"][i]), mask)
            assert ex["image/object/class/label"][i] == cls
            assert ex["image/object/class/text"][i] == names[cls].encode()
            assert ex["image/object/area"][i] == mask.sum()
            np.testing.assert_allclose(
                [ex[f"image/object/bbox/{k}"][i] for k in ("xmin", "ymin", "xmax", "ymax")],
                [x0 / w, y0 / h, x1 / w, y1 / h], rtol=1e-6)
    _check_class_maps(examples, root)
