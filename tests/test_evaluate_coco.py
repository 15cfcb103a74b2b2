"""Ground truth back out of our TFRecords: COCOeval on coco-eval-ref reproduces pycocotools."""
import json

import numpy as np
import pytest
from conftest import shared_data
from PIL import Image

from components.beam_options import IN_PROCESS_ARGS
from components.contract import LABEL_MAP_FILE
from components.paths import tfrecord_files


@pytest.fixture(scope="module")
def ref():
    return shared_data("coco-eval-ref")


@pytest.fixture(scope="module")
def ingested(ref, tmp_path_factory):
    from components.coco_source import CocoSource, label_map_for
    from pipelines.ingest import run

    tmp = tmp_path_factory.mktemp("cocoref")
    annotations = ref / "instances_val2014_100.json"
    gt = json.loads(annotations.read_text())
    images = tmp / "images"
    images.mkdir()
    for img in gt["images"]:  # the set ships no images: stand-ins of the listed sizes
        Image.new("RGB", (img["width"], img["height"]), (90, 120, 150)).save(
            images / img["file_name"], quality=50)
    out = tmp / "out"
    source = CocoSource(str(images), label_map_for([str(annotations)]))
    summary = run(source, [("val", str(annotations))], str(out), beam_args=IN_PROCESS_ARGS)
    return gt, out, summary


def test_ingest_counts(ingested):
    gt, _, summary = ingested
    assert summary["images"] == len(gt["images"]) == 100
    assert summary["examples"] == {"val": 100}
    assert summary["quarantined"] == 0
    assert summary["instances"] == len(gt["annotations"]) == 839


@pytest.mark.parametrize("iou_type,results", [
    ("bbox", "instances_val2014_fakebbox100_results.json"),
    ("segm", "instances_val2014_fakesegm100_results.json"),
])
def test_reproduces_expected_stats(ref, ingested, iou_type, results):
    from trainer_module.metrics import coco_eval

    _, out, _ = ingested
    expected = json.loads((ref / "expected_stats.json").read_text())[iou_type]
    got = coco_eval.evaluate_examples(str(out / "Split-val"), str(ref / results), iou_type)
    assert got["iou_type"] == iou_type
    assert len(got["stats"]) == 12
    np.testing.assert_allclose(got["stats"], expected, atol=1e-4)
    assert got["AP"] == got["stats"][0] and got["AP75"] == got["stats"][2]
    assert got["label_map"] == str(out / LABEL_MAP_FILE)


def test_ground_truth_round_trips(ingested):
    """Ids, sizes, categories, crowd flags, areas, boxes and masks come back as annotated."""
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    from trainer_module.metrics import coco_eval

    gt, out, _ = ingested
    files = tfrecord_files(str(out))
    label_map = json.loads((out / LABEL_MAP_FILE).read_text())
    rebuilt = coco_eval.ground_truth_from_examples(coco_eval.read_serialized(files), label_map)
    assert sorted((i["id"], i["height"], i["width"]) for i in rebuilt["images"]) == \
        sorted((i["id"], i["height"], i["width"]) for i in gt["images"])
    assert {c["id"] for c in rebuilt["categories"]} == {c["id"] for c in gt["categories"]}

    original = COCO()
    original.dataset = gt
    original.createIndex()

    def key(a):
        return (a["image_id"], a["category_id"], a["iscrowd"])

    by_key = {}
    for a in gt["annotations"]:
        by_key.setdefault(key(a), []).append(a)
    crowd_kinds = set()
    for a in rebuilt["annotations"]:
        candidates = by_key[key(a)]
        mask = mask_utils.decode(a["segmentation"])
        match = [c for c in candidates if np.isclose(c["area"], a["area"], rtol=1e-6)
                 and np.array_equal(original.annToMask(c), mask)]
        assert match, f"no original annotation with the same mask for {key(a)}"
        np.testing.assert_allclose(a["bbox"], match[0]["bbox"], atol=1e-3)
        if a["iscrowd"]:
            crowd_kinds.add(type(match[0]["segmentation"]["counts"]).__name__)
    assert len(rebuilt["annotations"]) == len(gt["annotations"])
    assert sum(a["iscrowd"] for a in rebuilt["annotations"]) == 9
    assert "list" in crowd_kinds  # uncompressed crowd RLEs went through


def test_compressed_crowd_rle_round_trips(tmp_path):
    """A crowd region given as a compressed RLE string comes back pixel-identical."""
    from components.coco_source import coco_mask
    from trainer_module.metrics.coco_eval import mask_to_rle

    rng = np.random.default_rng(0)
    mask = (rng.random((37, 53)) > 0.6).astype(np.uint8)
    rle = mask_to_rle(mask)
    assert isinstance(rle["counts"], str)
    np.testing.assert_array_equal(coco_mask(rle, 37, 53), mask)


def test_detections_to_coco_maps_labels_back():
    from trainer_module.metrics.coco_eval import detections_to_coco

    label_map = {"task": "instance", "classes": [{"label": 1, "id": 18, "name": "dog"}]}
    mask = np.zeros((10, 20), np.uint8)
    mask[2:5, 4:10] = 1
    [entry] = detections_to_coco(7, 10, 20, [[0.2, 0.2, 0.5, 0.5]], [0.9], [1], masks=[mask],
                                 label_map=label_map)
    assert entry["category_id"] == 18 and entry["image_id"] == 7
    np.testing.assert_allclose(entry["bbox"], [4, 2, 6, 3])
    from pycocotools import mask as mask_utils
    np.testing.assert_array_equal(mask_utils.decode(entry["segmentation"]), mask)
    probabilities = mask * 0.7 + 0.2  # 0.2 outside, 0.9 inside
    [entry] = detections_to_coco(7, 10, 20, [[0.2, 0.2, 0.5, 0.5]], [0.9], [1],
                                 masks=[probabilities])
    assert entry["category_id"] == 1  # no label map: our label
    np.testing.assert_array_equal(mask_utils.decode(entry["segmentation"]), mask)
