"""`benchmark(annotations, images, num_images)` (`segpipe bench ingest`): ingestion throughput
(images/s, masks included) and peak memory.

Replicates a COCO set to num_images images (new ids and file names, hard links to the real
pictures, annotations copied), then runs the same standalone Beam job as `segpipe ingest coco`
(DirectRunner, multi-processing on all cores) and samples the RSS of the whole process tree
(this process and every Beam worker) every 0.2 s.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
import time

from components.beam_options import DIRECT_RUNNER_ARGS
from components.errors import InputError


def replicate_coco(annotations: str, images: str, num_images: int, out_dir: str) -> tuple[str, str]:
    """A COCO set of num_images images cycling through the source ones; returns (json, image root)."""
    with open(annotations, encoding="utf-8") as f:
        data = json.load(f)
    sources = data["images"]
    if not sources:
        raise InputError(f"{annotations} lists no images")
    by_image: dict = {}
    for ann in data.get("annotations", []):
        by_image.setdefault(ann["image_id"], []).append(ann)
    image_root = os.path.join(out_dir, "images")
    os.makedirs(image_root, exist_ok=True)
    new_images, new_anns = [], []
    for i in range(num_images):
        src = sources[i % len(sources)]
        name = f"{i:06d}_{os.path.basename(src['file_name'])}"
        src_path, dst_path = os.path.join(images, src["file_name"]), os.path.join(image_root, name)
        try:
            os.link(src_path, dst_path)
        except OSError:  # other file system: copy
            shutil.copyfile(src_path, dst_path)
        new_images.append(dict(src, id=i + 1, file_name=name))
        for ann in by_image.get(src["id"], []):
            new_anns.append(dict(ann, id=len(new_anns) + 1, image_id=i + 1))
    path = os.path.join(out_dir, "annotations.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(dict(data, images=new_images, annotations=new_anns), f)
    return path, image_root


class TreeMemory:
    """Peak summed RSS of this process and all its descendants, sampled in a thread."""

    def __init__(self, interval: float = 0.2):
        import psutil

        self._root = psutil.Process()
        self._interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        import psutil

        while not self._stop.is_set():
            total = 0
            for proc in [self._root] + self._root.children(recursive=True):
                try:
                    total += proc.memory_info().rss
                except psutil.Error:  # exited between listing and reading
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(self._interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def benchmark(annotations: str, images: str, num_images: int = 2000, workdir: str | None = None) -> dict:
    """Replicates the COCO set to num_images images in workdir (default: a new temporary
    directory), ingests them and returns throughput and peak memory."""
    if num_images < 1:
        raise InputError(f"the number of images must be >= 1, got {num_images}")
    workdir = workdir or tempfile.mkdtemp(prefix="segpipe-bench-ingest-")
    if os.path.isdir(workdir) and os.listdir(workdir):
        raise InputError(f"workdir {workdir} is not empty")
    from components.coco_source import CocoSource, label_map_for
    from pipelines import ingest

    data_dir, out_dir = os.path.join(workdir, "data"), os.path.join(workdir, "out")
    annotations, images = replicate_coco(annotations, images, num_images, data_dir)
    print(f"bench ingest: {num_images} images in {data_dir}", file=sys.stderr)
    source = CocoSource(images, label_map_for([annotations]))
    with TreeMemory() as memory:
        start = time.perf_counter()
        summary = ingest.run(source, [("all", annotations)], out_dir, hash_split={})
        seconds = time.perf_counter() - start
    output_bytes = sum(os.path.getsize(os.path.join(d, f))
                       for d, _, files in os.walk(out_dir) for f in files)
    return {
        "images": summary["images"], "examples": summary["examples"],
        "instances": summary["instances"], "quarantined": summary["quarantined"],
        "seconds": round(seconds, 2), "images_per_second": round(summary["images"] / seconds, 2),
        "peak_rss_mb_process_tree": round(memory.peak / 2**20, 1),
        "output_mb": round(output_bytes / 2**20, 1), "cpu_count": os.cpu_count(),
        "runner": "DirectRunner " + " ".join(DIRECT_RUNNER_ARGS), "workdir": workdir,
    }
