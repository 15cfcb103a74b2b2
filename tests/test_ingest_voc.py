"""VOC ingestion on real data: class maps equal the source palette PNGs pixel for pixel."""
import io
import json
import shutil
from pathlib import Path

import numpy as np
from conftest import read_examples, shared_data
from PIL import Image

from components import contract as keys
from components.beam_options import IN_PROCESS_ARGS

LABELME_SEM = "labelme/semantic_segmentation/data_dataset_voc"
LABELME_INST = "labelme/instance_segmentation/data_dataset_voc"
CAMVID = "camvid-voc"


def _ingest(out, root):
    from pipelines.ingest import ingest_voc

    return ingest_voc(str(root), str(out), beam_args=IN_PROCESS_ARGS)


def _check_class_maps(examples: dict, root: Path):
    from components.example_codec import decode_png

    for stem, ex in examples.items():
        assert ex[keys.IMAGE_ENCODED][0] == (root / "JPEGImages" / f"{stem}.jpg").read_bytes()
        assert ex[keys.IMAGE_FILENAME] == [f"JPEGImages/{stem}.jpg".encode()]
        assert ex[keys.CLASS_MAP_FORMAT] == [b"png"]
        png = ex[keys.CLASS_MAP_ENCODED][0]
        assert Image.open(io.BytesIO(png)).mode == "L"  # class ids, not a palette
        source = np.asarray(Image.open(root / "SegmentationClass" / f"{stem}.png"))
        np.testing.assert_array_equal(decode_png(png), source)
        assert (ex[keys.IMAGE_HEIGHT][0], ex[keys.IMAGE_WIDTH][0]) == source.shape


def test_labelme_voc_semantic(tmp_path):
    labelme_sem = shared_data(LABELME_SEM)

    summary = _ingest(tmp_path / "out", labelme_sem)
    assert summary["images"] == 3 and summary["quarantined"] == 0 and summary["instances"] == 0
    assert set(summary["examples"]) == {"train", "val"}  # no lists: hash split
    examples = {}
    for split in summary["examples"]:
        examples.update(read_examples(tmp_path / "out" / f"Split-{split}"))
    assert sorted(examples) == ["2011_000003", "2011_000006", "2011_000025"]
    for ex in examples.values():
        assert set(ex) == set(keys.IMAGE_KEYS + keys.CLASS_MAP_KEYS)
    _check_class_maps(examples, labelme_sem)
    label_map = json.loads((tmp_path / "out" / keys.LABEL_MAP_FILE).read_text())
    names = (labelme_sem / "class_names.txt").read_text().split("\n")
    assert [c["name"] for c in label_map["classes"]] == [n for n in names if n]
    assert [c["label"] for c in label_map["classes"]] == list(range(21))


def test_camvid_splits_from_lists(tmp_path):
    camvid = shared_data(CAMVID)
    summary = _ingest(tmp_path / "out", camvid)
    assert summary["examples"] == {"train": 367, "val": 101}
    assert summary["images"] == 468 and summary["quarantined"] == 0
    assert summary["num_classes"] == 11
    for split in ("train", "val"):
        examples = read_examples(tmp_path / "out" / f"Split-{split}")
        listed = (camvid / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
        assert sorted(examples) == sorted(listed)
        _check_class_maps(examples, camvid)


def _write_xml(path: Path, stem: str, objects: list[tuple[str, tuple]]):
    parts = [f"<annotation><filename>{stem}.jpg</filename>"]
    for name, (x0, y0, x1, y1) in objects:  # VOC boxes: 1-based, inclusive
        parts.append(f"<object><name>{name}</name><bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}"
                     f"</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>")
    path.write_text("".join(parts) + "</annotation>")


def test_voc_instances_from_segmentation_object_and_xml(tmp_path):
    """SegmentationObject + Annotations XML give instance masks, boxes and labels."""
    labelme_inst = shared_data(LABELME_INST)
    from components.example_codec import decode_png

    root = tmp_path / "voc"
    shutil.copytree(labelme_inst, root)
    (root / "Annotations").mkdir()
    names = [n for n in (root / "class_names.txt").read_text().split("\n") if n]
    expected = {}
    for png in sorted((root / "SegmentationObject").glob("*.png")):
        objects_img = np.asarray(Image.open(png))
        classes = np.asarray(Image.open(root / "SegmentationClass" / png.name))
        objects = []
        for index in range(1, int(objects_img[objects_img != keys.IGNORE_LABEL].max()) + 1):
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
        examples.update(read_examples(tmp_path / "out" / f"Split-{split}"))
    for stem, objects in expected.items():
        ex = examples[stem]
        h, w = ex[keys.IMAGE_HEIGHT][0], ex[keys.IMAGE_WIDTH][0]
        assert len(ex[keys.OBJECT_MASK]) == len(objects)
        for i, (mask, cls, (x0, y0, x1, y1)) in enumerate(objects):
            np.testing.assert_array_equal(decode_png(ex[keys.OBJECT_MASK][i]), mask)
            assert ex[keys.OBJECT_LABEL][i] == cls
            assert ex[keys.OBJECT_TEXT][i] == names[cls].encode()
            assert ex[keys.OBJECT_AREA][i] == mask.sum()
            np.testing.assert_allclose(
                [ex[k][i] for k in (keys.OBJECT_XMIN, keys.OBJECT_YMIN, keys.OBJECT_XMAX, keys.OBJECT_YMAX)],
                [x0 / w, y0 / h, x1 / w, y1 / h], rtol=1e-6)
    _check_class_maps(examples, root)
