"""COCO ingestion on real labelme data: masks equal pycocotools' annToMask pixel for pixel."""
import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import read_examples, shared_data

from components import contract as keys
from components.beam_options import IN_PROCESS_ARGS

LABELME_COCO = "labelme/instance_segmentation/data_dataset_coco"


def _ingest(out, annotations, images):
    from pipelines.ingest import ingest_coco

    return ingest_coco(annotations, str(images), str(out), beam_args=IN_PROCESS_ARGS)


def _check_against_coco(ex: dict, coco, image: dict, image_root: Path, label_map: dict):
    """Every field of one example against the COCO source (masks via annToMask)."""
    from components.example_codec import decode_png

    assert set(ex) == set(keys.IMAGE_KEYS + keys.OBJECT_KEYS)
    assert ex[keys.IMAGE_ENCODED][0] == (image_root / image["file_name"]).read_bytes()
    assert ex[keys.IMAGE_FORMAT] == [b"jpeg"]
    assert ex[keys.IMAGE_FILENAME] == [image["file_name"].encode()]
    h, w = image["height"], image["width"]
    assert (ex[keys.IMAGE_HEIGHT], ex[keys.IMAGE_WIDTH]) == ([h], [w])
    label_of = keys.label_by_id(label_map)
    name_of = keys.names_by_label(label_map)
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]]))
    assert len(ex[keys.OBJECT_MASK]) == len(anns)
    for i, ann in enumerate(anns):  # annotation order is kept
        np.testing.assert_array_equal(decode_png(ex[keys.OBJECT_MASK][i]), coco.annToMask(ann))
        assert ex[keys.OBJECT_LABEL][i] == label_of[ann["category_id"]]
        assert ex[keys.OBJECT_TEXT][i] == name_of[label_of[ann["category_id"]]].encode()
        assert ex[keys.OBJECT_IS_CROWD][i] == ann.get("iscrowd", 0)
        assert ex[keys.OBJECT_AREA][i] == pytest.approx(ann["area"], rel=1e-6)
        x, y, bw, bh = ann["bbox"]
        np.testing.assert_allclose(
            [ex[k][i] for k in (keys.OBJECT_XMIN, keys.OBJECT_YMIN, keys.OBJECT_XMAX, keys.OBJECT_YMAX)],
            [x / w, y / h, (x + bw) / w, (y + bh) / h], rtol=1e-6)


def test_labelme_coco_pixel_exact(tmp_path):
    labelme_coco = shared_data(LABELME_COCO)
    from pycocotools.coco import COCO

    summary = _ingest(tmp_path / "out", str(labelme_coco / "annotations.json"), labelme_coco)
    assert summary["images"] == 3 and summary["quarantined"] == 0
    assert summary["instances"] == 12 and summary["dropped_annotations"] == {}
    assert sum(summary["examples"].values()) == 3
    assert (tmp_path / "out" / "quarantine.jsonl").read_text() == ""

    label_map = json.loads((tmp_path / "out" / "label_map.json").read_text())
    # labelme's `_background_` (id 0) gets no label; the rest are contiguous from 1
    assert [c["label"] for c in label_map["classes"]] == list(range(1, 21))
    assert "_background_" not in {c["name"] for c in label_map["classes"]}

    coco = COCO(str(labelme_coco / "annotations.json"))
    examples = read_examples(tmp_path / "out")
    assert sorted(examples) == sorted(str(i) for i in coco.getImgIds())
    for image in coco.dataset["images"]:
        _check_against_coco(examples[str(image["id"])], coco, image, labelme_coco, label_map)

    # hash split by image id, exactly as TFX's ExampleGen partitions on image/source_id
    import tensorflow as tf
    from tfx.components.example_gen import base_example_gen_executor

    from components.ingest_beam import hash_output_config

    config = hash_output_config(None).split_config
    buckets = np.cumsum([s.hash_buckets for s in config.splits]).tolist()
    for split in summary["examples"]:
        for ex in read_examples(tmp_path / "out" / f"Split-{split}").values():
            key = tf.train.Example()
            key.features.feature[keys.IMAGE_SOURCE_ID].bytes_list.value.extend(ex[keys.IMAGE_SOURCE_ID])
            index = base_example_gen_executor._PartitionFn(key, len(buckets), buckets, config)
            assert config.splits[index].name == split


def test_per_split_files_subfolders_crowds_and_empty_images(tmp_path):
    """One file per split; file_name with sub-folders; an image without annotations is kept;
    crowd regions as uncompressed and compressed RLE come out equal to annToMask."""
    labelme_coco = shared_data(LABELME_COCO)
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    gt = json.loads((labelme_coco / "annotations.json").read_text())
    root = tmp_path / "images"
    (root / "a" / "b").mkdir(parents=True)
    for img in gt["images"]:
        shutil.copy(labelme_coco / img["file_name"], root / "a" / "b" / Path(img["file_name"]).name)
        img["file_name"] = "a/b/" + Path(img["file_name"]).name
    # crowd versions of two polygons, one as uncompressed RLE, one compressed
    coco = COCO(str(labelme_coco / "annotations.json"))
    crowd = []
    for ann, compressed in ((gt["annotations"][0], False), (gt["annotations"][5], True)):
        mask = coco.annToMask(ann)
        rle = mask_utils.encode(np.asfortranarray(mask))
        if compressed:
            segm = {"size": rle["size"], "counts": rle["counts"].decode()}
        else:
            flat = mask.flatten(order="F")
            changes = np.flatnonzero(np.diff(flat)) + 1
            runs = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
            segm = {"size": list(mask.shape), "counts": ([0] if flat[0] else []) + runs}
        crowd.append(dict(copy.deepcopy(ann), id=100 + len(crowd), iscrowd=1, segmentation=segm))
    gt["annotations"] += crowd
    train = dict(gt, images=gt["images"][:2],
                 annotations=[a for a in gt["annotations"] if a["image_id"] in (0, 1)])
    empty_image = dict(gt["images"][2], id=77)  # same picture, listed without annotations
    val = dict(gt, images=[gt["images"][2], empty_image],
               annotations=[a for a in gt["annotations"] if a["image_id"] == 2])
    (tmp_path / "train.json").write_text(json.dumps(train))
    (tmp_path / "val.json").write_text(json.dumps(val))

    summary = _ingest(tmp_path / "out", {"train": str(tmp_path / "train.json"),
                                         "val": str(tmp_path / "val.json")}, root)
    assert summary["examples"] == {"train": 2, "val": 2}
    assert summary["quarantined"] == 0 and summary["instances"] == 14
    label_map = json.loads((tmp_path / "out" / "label_map.json").read_text())
    for split, data in (("train", train), ("val", val)):
        path = tmp_path / f"{split}.json"
        split_coco = COCO(str(path))
        examples = read_examples(tmp_path / "out" / f"Split-{split}")
        assert sorted(examples) == sorted(str(i["id"]) for i in data["images"])
        for image in data["images"]:
            _check_against_coco(examples[str(image["id"])], split_coco, image, root, label_map)
    assert read_examples(tmp_path / "out" / "Split-val")["77"][keys.OBJECT_MASK] == []


def test_label_map_rules():
    from components import label_map
    from components.errors import InputError

    cats = [{"id": 0, "name": "_background_"}, {"id": 90, "name": "toothbrush"},
            {"id": 3, "name": "car"}]
    lm = label_map.from_coco_categories(cats)
    assert lm == {"task": "instance", "classes": [{"label": 1, "id": 3, "name": "car"},
                                                  {"label": 2, "id": 90, "name": "toothbrush"}]}
    with pytest.raises(InputError, match="listed twice"):
        label_map.from_coco_categories(cats + [{"id": 3, "name": "truck"}])
    sem = label_map.from_class_names(["__ignore__", "_background_", "road"])
    assert [(c["label"], c["name"]) for c in sem["classes"]] == [(0, "_background_"), (1, "road")]
    assert len(label_map.read_class_names(None)) == 21


def test_examples_serialise_byte_for_byte_like_tensorflow():
    """The codec writes tf.Examples without TensorFlow (Beam workers never import it); the bytes are
    those of tf.train.Example.SerializeToString(deterministic=True), empty lists, negative and
    large ints, float rounding and non-ASCII text included; the hash partition is TFX's."""
    import tensorflow as tf
    from tfx.components.example_gen import base_example_gen_executor

    from components import example_codec as codec
    from components.ingest_beam import HashPartition, hash_output_config

    objects = [{"box": (0.1, 0.2, 0.3333333333, 1.0), "label": 3, "text": "pedestrian", "is_crowd": 0,
                "area": 1234.5678, "mask": b"\x89PNG\r\n..."},
               {"box": (0.0, 0.5, 0.75, 0.9), "label": 2**40, "text": "vélo", "is_crowd": 1, "area": 1e-7,
                "mask": b""}]
    cases = [dict(objects=objects), dict(objects=[]), dict(objects=None, class_png=b"\x00\x01\x02"),
             dict(objects=[dict(objects[0], label=-5)])]
    for case in cases:
        ours = codec.make_example(encoded=b"\xff\xd8" + bytes(range(256)) * 3, fmt="jpeg", height=375,
                                  width=500, source_id="2011_000003", filename="JPEGImages/a.jpg", **case)
        parsed = tf.train.Example.FromString(ours)
        assert ours == parsed.SerializeToString(deterministic=True)
        assert parsed.features.feature[keys.IMAGE_HEIGHT].int64_list.value == [375]
        if case["objects"]:
            labels = parsed.features.feature[keys.OBJECT_LABEL].int64_list.value
            assert list(labels) == [o["label"] for o in case["objects"]]
            xmax = parsed.features.feature[keys.OBJECT_XMAX].float_list.value[0]
            assert xmax == np.float32(case["objects"][0]["box"][2])

    config = hash_output_config({"train": 3, "val": 1, "test": 2}).split_config
    buckets = np.cumsum([s.hash_buckets for s in config.splits]).tolist()
    partition = HashPartition([s.hash_buckets for s in config.splits])
    for source_id in [str(i) for i in range(300)] + ["2011_000003", "ünïcode"]:
        key = tf.train.Example()
        key.features.feature[keys.IMAGE_SOURCE_ID].bytes_list.value.append(source_id.encode())
        assert partition(source_id) == base_example_gen_executor._PartitionFn(key, len(buckets), buckets, config)
