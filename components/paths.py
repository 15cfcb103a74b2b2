"""Local-or-remote paths, in one place. Remote URLs (gs://, s3://, ...) go through tf.io.gfile,
imported only when a remote path is actually used, so local work never pays TensorFlow's import."""
from __future__ import annotations

import glob as _glob
import os


def is_remote(path: str) -> bool:
    return "://" in str(path)


def join(root: str, path: str) -> str:
    """`path` when it is absolute or remote, else `path` under `root`."""
    if os.path.isabs(path) or is_remote(path):
        return path
    return root.rstrip("/") + "/" + path if is_remote(root) else os.path.join(root, path)


def open_file(path: str, mode: str = "r"):
    if is_remote(path):
        import tensorflow as tf
        return tf.io.gfile.GFile(path, mode)
    return open(path, mode) if "b" in mode else open(path, mode, encoding="utf-8")


def exists(path: str) -> bool:
    if is_remote(path):
        import tensorflow as tf
        return tf.io.gfile.exists(path)
    return os.path.exists(path)


def remove(path: str) -> None:
    if is_remote(path):
        import tensorflow as tf
        tf.io.gfile.remove(path)
    else:
        os.remove(path)


def glob(pattern: str) -> list[str]:
    """Sorted matches of one pattern."""
    if is_remote(pattern):
        import tensorflow as tf
        return sorted(tf.io.gfile.glob(pattern))
    return sorted(_glob.glob(pattern))


def tfrecord_files(patterns, what: str = "TFRecord files") -> list[str]:
    """Sorted files matching one glob or a list of globs; a directory stands for every TFRecord
    file beneath it (name containing "tfrecord" or ending in .gz: a TFX Examples artifact with its
    Split-* folders, or a `segpipe ingest` output). An empty match is an error naming the patterns."""
    from components.errors import InputError

    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    files = set()
    for pattern in patterns:
        if is_remote(pattern):
            import tensorflow as tf
            if tf.io.gfile.isdir(pattern):
                files.update(f"{d.rstrip('/')}/{name}" for d, _, names in tf.io.gfile.walk(pattern)
                             for name in names if _is_tfrecord_name(name))
            else:
                files.update(tf.io.gfile.glob(pattern))
        elif os.path.isdir(pattern):
            files.update(p for p in _glob.glob(os.path.join(pattern, "**", "*"), recursive=True)
                         if os.path.isfile(p) and _is_tfrecord_name(os.path.basename(p)))
        else:
            files.update(_glob.glob(pattern))
    files = sorted(f for f in files if not os.path.basename(f).startswith((".", "_")))
    if not files:
        raise InputError(f"no {what} match {patterns}")
    return files


def _is_tfrecord_name(name: str) -> bool:
    return "tfrecord" in name or name.endswith(".gz")


def tfrecord_compression(path: str) -> str:
    """The compression TFX writes (GZIP, `*.gz`) or none."""
    return "GZIP" if str(path).endswith(".gz") else ""
