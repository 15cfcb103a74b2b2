"""The data contract every room shares: tf.Example keys, the ignore value, label-map accessors.

No TensorFlow here (the CLI, the ExampleGens' argument checks and the tests import it cheaply).
docs/ARCHITECTURE.md ("The tf.Example contract", "The label map") explains what each key holds.
The keys are Model Garden's, so TFRecords interoperate both ways.
"""
from __future__ import annotations

from components.errors import InputError

# Image features (every example).
IMAGE_ENCODED = "image/encoded"        # original JPEG/PNG bytes, never re-encoded
IMAGE_FORMAT = "image/format"          # b"jpeg" | b"png"
IMAGE_HEIGHT = "image/height"
IMAGE_WIDTH = "image/width"
IMAGE_SOURCE_ID = "image/source_id"    # the dataset's image id, as text
IMAGE_FILENAME = "image/filename"      # relative to the image root

# Object features (instance examples; VOC examples when SegmentationObject/ is present).
OBJECT_XMIN = "image/object/bbox/xmin"  # normalised to [0, 1]
OBJECT_YMIN = "image/object/bbox/ymin"
OBJECT_XMAX = "image/object/bbox/xmax"
OBJECT_YMAX = "image/object/bbox/ymax"
OBJECT_LABEL = "image/object/class/label"  # contiguous 1..N (0 is background)
OBJECT_TEXT = "image/object/class/text"
OBJECT_IS_CROWD = "image/object/is_crowd"
OBJECT_AREA = "image/object/area"          # the annotation's area in pixels
OBJECT_MASK = "image/object/mask"          # one 0/1 PNG per object, full image size

# Semantic class map (VOC examples).
CLASS_MAP_ENCODED = "image/segmentation/class/encoded"  # PNG of class ids, full image size
CLASS_MAP_FORMAT = "image/segmentation/class/format"

IMAGE_KEYS = (IMAGE_ENCODED, IMAGE_FORMAT, IMAGE_HEIGHT, IMAGE_WIDTH, IMAGE_SOURCE_ID, IMAGE_FILENAME)
OBJECT_KEYS = (OBJECT_XMIN, OBJECT_YMIN, OBJECT_XMAX, OBJECT_YMAX, OBJECT_LABEL, OBJECT_TEXT,
               OBJECT_IS_CROWD, OBJECT_AREA, OBJECT_MASK)
CLASS_MAP_KEYS = (CLASS_MAP_ENCODED, CLASS_MAP_FORMAT)

# Pixel value of "not labelled" in class maps and in padded predictions/labels: never a class,
# never counted by a loss or a metric.
IGNORE_LABEL = 255

# The label map file written next to the examples and exported with every model.
LABEL_MAP_FILE = "label_map.json"


def image_hw(size) -> tuple[int, int]:
    """`trainer.image_size` as (height, width): S means a square S x S, [H, W] a rectangle (semantic
    models train on the photos' aspect ratio that way, e.g. [240, 320] for 480x360 road scenes)."""
    if isinstance(size, (list, tuple)):
        if len(size) != 2:
            raise InputError(f"image_size must be S or [height, width], got {list(size)}")
        height, width = size
    else:
        height = width = size
    try:
        hw = (int(height), int(width))
    except (TypeError, ValueError):
        raise InputError(f"image_size must be S or [height, width] in pixels, got {size!r}") from None
    if min(hw) < 16 or hw != (height, width):
        raise InputError(f"image_size must be whole pixels, at least 16, got {size!r}")
    return hw


def image_size_of(height: int, width: int):
    """The image_size value of an H x W input (the inverse of image_hw): S when square, else [H, W]."""
    return int(height) if int(height) == int(width) else [int(height), int(width)]


def _classes(label_map: dict | None) -> list[dict]:
    if not label_map or not label_map.get("classes"):
        raise InputError("a label map with a non-empty 'classes' list is required "
                         "(set data.label_map to the label_map.json that `segpipe ingest` writes)")
    return label_map["classes"]


def names_by_label(label_map: dict) -> dict[int, str]:
    return {int(c["label"]): str(c["name"]) for c in _classes(label_map)}


def label_by_id(label_map: dict) -> dict[int, int]:
    """Dataset category id -> contiguous label."""
    return {int(c["id"]): int(c["label"]) for c in _classes(label_map)}


def id_by_label(label_map: dict) -> dict[int, int]:
    """Contiguous label -> dataset category id."""
    return {int(c["label"]): int(c["id"]) for c in _classes(label_map)}


def semantic_num_classes(label_map: dict | None) -> int:
    """Semantic labels are the pixel values 0..N-1 (0 = background; IGNORE_LABEL is no class)."""
    ids = [int(c["id"]) for c in _classes(label_map)]
    if min(ids) < 0 or max(ids) >= IGNORE_LABEL:
        raise InputError(f"semantic class ids must lie in 0..{IGNORE_LABEL - 1}, got {sorted(ids)}")
    return max(ids) + 1


def semantic_class_names(label_map: dict | None) -> list[str]:
    """Names indexed by class id 0..N-1 (gaps named by their id)."""
    names = names_by_label(label_map)
    return [names.get(i, str(i)) for i in range(semantic_num_classes(label_map))]


def instance_category_ids(label_map: dict | None) -> list[int]:
    """Dataset category ids indexed by label - 1 (instance labels are 1..N, background has none)."""
    by_label = id_by_label(label_map)
    n = len(by_label)
    if sorted(by_label) != list(range(1, n + 1)):
        raise InputError(f"instance label map labels must be 1..{n}, got {sorted(by_label)}")
    return [by_label[i] for i in range(1, n + 1)]
