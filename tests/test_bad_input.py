"""Bad input is never silent: every image ends as an example or a quarantine record; unusable
annotations are dropped with a record; repairable boxes are clipped and counted;
max_bad_fraction fails the run with a clear message."""
import json
import shutil

import numpy as np
import pytest
from conftest import read_examples, shared_data

from components import contract as keys
from components.beam_options import IN_PROCESS_ARGS

IN_PROCESS = [f"--beam-arg={arg}" for arg in IN_PROCESS_ARGS]


@pytest.fixture(scope="module")
def bad_set(tmp_path_factory):
    """The 3 real labelme images plus broken ones, and broken annotations."""
    labelme_coco = shared_data("labelme/instance_segmentation/data_dataset_coco")
    root = tmp_path_factory.mktemp("bad")
    images = root / "images"
    shutil.copytree(labelme_coco / "JPEGImages", images / "JPEGImages")
    jpeg = (images / "JPEGImages" / "2011_000003.jpg").read_bytes()
    (images / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (images / "not_an_image.jpg").write_bytes(b"this is not a JPEG\n" * 10)

    gt = json.loads((labelme_coco / "annotations.json").read_text())
    size = {"height": 338, "width": 500}
    gt["images"] += [
        dict(size, id=10, file_name="truncated.jpg"),
        dict(size, id=11, file_name="not_an_image.jpg"),
        dict(size, id=12, file_name="missing.jpg"),
        dict(gt["images"][0], file_name="JPEGImages/2011_000025.jpg"),  # duplicate id 0
    ]
    polygon = gt["annotations"][0]["segmentation"]
    gt["annotations"] += [
        {"id": 101, "image_id": 0, "category_id": 15, "segmentation": [[10, 10, 50, 50]],
         "area": 0.0, "bbox": [10, 10, 40, 40], "iscrowd": 0},  # 2-point polygon
        {"id": 102, "image_id": 0, "category_id": 999, "segmentation": polygon,
         "area": 100.0, "bbox": [191, 107, 123, 221], "iscrowd": 0},  # unknown category
        {"id": 103, "image_id": 555, "category_id": 15, "segmentation": polygon,
         "area": 100.0, "bbox": [191, 107, 123, 221], "iscrowd": 0},  # unknown image
        {"id": 104, "image_id": 1, "category_id": 7, "segmentation": [[450, 200, 499, 200, 499, 250]],
         "area": 1225.0, "bbox": [450, 200, 80, 50], "iscrowd": 0},  # box partly outside
        {"id": 105, "image_id": 1, "category_id": 0, "segmentation": polygon,
         "area": 100.0, "bbox": [191, 107, 123, 221], "iscrowd": 0},  # labelme _background_
    ]
    annotations = root / "annotations.json"
    annotations.write_text(json.dumps(gt))
    return root, annotations, images, gt


def _run_cli(argv, capsys):
    from pipelines import cli

    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_every_image_lands_once_and_counts_add_up(bad_set, tmp_path, capsys):
    root, annotations, images, gt = bad_set
    out = tmp_path / "out"
    code, stdout, stderr = _run_cli(
        ["ingest", "coco", "--annotations", str(annotations), "--images", str(images),
         "--out", str(out), "--max-bad-fraction", "0.9", *IN_PROCESS], capsys)
    assert code == 0, stderr
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary == json.loads((out / "summary.json").read_text())

    records = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
    image_records = [r for r in records if r["kind"] == "image"]
    ann_records = [r for r in records if r["kind"] == "annotation"]
    assert sorted((r["image_id"], r["reason"]) for r in image_records) == [
        (0, "duplicate image id"), (10, "unreadable image"), (11, "unreadable image"),
        (12, "missing file")]
    assert sorted((r["annotation_id"], r["reason"]) for r in ann_records) == [
        (101, "invalid polygon"), (102, "unknown category"), (103, "unknown image id"),
        (105, "unknown category")]

    assert summary["images"] == len(gt["images"]) == 7
    assert summary["quarantined"] == len(image_records) == 4
    assert sum(summary["examples"].values()) + summary["quarantined"] == summary["images"]
    assert summary["quarantine_reasons"] == {"duplicate image id": 1, "missing file": 1,
                                             "unreadable image": 2}
    assert summary["dropped_annotations"] == {"invalid polygon": 1, "unknown category": 2,
                                              "unknown image id": 1}
    assert summary["repaired_annotations"] == {"box clipped": 1}
    assert summary["instances"] == 12 + 1  # the real ones plus the clipped one

    examples = read_examples(out)
    assert sorted(examples) == ["0", "1", "2"]
    # the duplicate lost: id 0 is still the first-listed picture
    assert examples["0"][keys.IMAGE_FILENAME] == [b"JPEGImages/2011_000003.jpg"]
    clipped = examples["1"]
    assert len(clipped[keys.OBJECT_MASK]) == 4
    assert clipped[keys.OBJECT_XMAX][-1] == 1.0
    assert clipped[keys.OBJECT_XMIN][-1] == pytest.approx(450 / 500)


def test_max_bad_fraction_fails_clearly(bad_set, tmp_path, capsys):
    root, annotations, images, _ = bad_set
    out = tmp_path / "out"
    code, stdout, stderr = _run_cli(
        ["ingest", "coco", "--annotations", str(annotations), "--images", str(images),
         "--out", str(out), *IN_PROCESS], capsys)
    assert code == 2
    message = stderr.strip().splitlines()[-1]
    assert "4 of 7 images quarantined" in message and "max_bad_fraction 0.05" in message
    assert str(out / "quarantine.jsonl") in message
    assert "'unreadable image': 2" in message and "'missing file': 1" in message
    # the evidence stays for the user to read
    assert len((out / "quarantine.jsonl").read_text().splitlines()) == 8


def test_invalid_segmentations_are_rejected_not_guessed():
    from components.coco_source import coco_mask
    from components.example_codec import BadInput

    with pytest.raises(BadInput, match="invalid polygon"):
        coco_mask([[1, 2, 3, 4]], 10, 10)  # 4 numbers: a degenerate polygon, not a box
    with pytest.raises(BadInput, match="invalid polygon"):
        coco_mask([[1, 2, 3, 4, 5]], 10, 10)
    with pytest.raises(BadInput, match="invalid RLE"):
        coco_mask({"size": [10, 10], "counts": [5, 5]}, 10, 10)  # does not cover the image
    with pytest.raises(BadInput, match="invalid RLE"):
        coco_mask({"size": [9, 10], "counts": [90]}, 10, 10)
    mask = coco_mask([[0, 0, 4, 0, 4, 4, 0, 4], [6, 6, 9, 6, 9, 9]], 10, 10)  # two parts
    assert mask.dtype == np.uint8 and mask[1, 1] == 1 and mask[7, 8] == 1 and mask[8, 7] == 0


def test_voc_bad_masks_are_quarantined(tmp_path, capsys):
    """VOC: a missing class PNG, a class PNG of the wrong size and one with class ids beyond the
    class list each quarantine their image; the good images still come through."""
    src = shared_data("labelme/semantic_segmentation/data_dataset_voc")
    from PIL import Image

    root = tmp_path / "voc"
    shutil.copytree(src, root)
    jpeg = root / "JPEGImages" / "2011_000003.jpg"
    for stem in ("no_mask", "wrong_size", "bad_class"):
        shutil.copy(jpeg, root / "JPEGImages" / f"{stem}.jpg")
    good = np.asarray(Image.open(root / "SegmentationClass" / "2011_000003.png"))
    Image.fromarray(good[:100]).save(root / "SegmentationClass" / "wrong_size.png")
    Image.fromarray(np.where(good == 15, 40, good).astype(np.uint8)).save(
        root / "SegmentationClass" / "bad_class.png")
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("2011_000003\n2011_000006\nno_mask\nwrong_size\n")
    (lists / "val.txt").write_text("2011_000025\nbad_class\n")

    out = tmp_path / "out"
    code, stdout, stderr = _run_cli(["ingest", "voc", "--root", str(root), "--out", str(out),
                                     "--max-bad-fraction", "0.5", *IN_PROCESS], capsys)
    assert code == 0, stderr
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["examples"] == {"train": 2, "val": 1}
    assert summary["images"] == 6 and summary["quarantined"] == 3
    assert summary["quarantine_reasons"] == {"class id out of range": 1, "missing file": 1,
                                             "size mismatch": 1}
    records = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
    assert sorted((r["image_id"], r["split"]) for r in records) == [
        ("bad_class", "val"), ("no_mask", "train"), ("wrong_size", "train")]
