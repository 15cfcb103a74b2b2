"""Span and version placeholders (`{SPAN}`, `{SPAN:3}`, `{VERSION}`) in dataset paths, the way TFX's
FileBasedExampleGen understands them.

A data root such as `gs://bucket/coco/span-{SPAN}` is handed to TFX as a fixed `input_base`
(`gs://bucket/coco`, everything before the first placeholder's path component) and split patterns
relative to it (`span-{SPAN}/annotations/instances_train.json`). TFX's FileBasedDriver then finds
the newest span (or the one of a static `range_config`) exactly as for any FileBasedExampleGen,
rewrites the patterns and passes `span` / `version` to the executor, which fills the same
placeholders of the root (`fill`) to find images and masks. `segpipe ingest` and the pipeline
build use `resolve` (the driver's own code) to pick the same span.

A path without placeholders is used as is: nothing here changes how a fixed folder is read.
"""
from __future__ import annotations

import re

from components.errors import InputError

_PLACEHOLDER = re.compile(r"\{(SPAN|VERSION)(:[^}]*)?\}")


def has_placeholder(path) -> bool:
    return bool(path) and isinstance(path, str) and bool(_PLACEHOLDER.search(path))


def _static_prefix(path: str) -> str:
    """The directory part of `path` before its first placeholder (all of it when there is none)."""
    match = _PLACEHOLDER.search(path)
    if not match:
        return path.rstrip("/")
    return path[:match.start()].rsplit("/", 1)[0]


def common_base(paths: list[str]) -> str:
    """The deepest directory that holds every path's fixed part (TFX's `input_base`)."""
    parts = [_static_prefix(p).split("/") for p in paths]
    common = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    base = "/".join(common)
    if not base or base.endswith(":") or base.endswith(":/"):
        raise InputError(f"the span paths {paths} share no base directory")
    return base


def relative(path: str, base: str) -> str:
    """`path` relative to `base` ("" for base itself)."""
    if path.rstrip("/") == base:
        return ""
    if not path.startswith(base + "/"):
        raise InputError(f"{path} is not under {base}")
    return path[len(base) + 1:]


def split_base(data_root: str, patterns: list[str]) -> tuple[str, list[str], str | None]:
    """(TFX input_base, split patterns relative to it, the data root relative to it or None).

    `patterns` are relative to `data_root` (or absolute). Without placeholders anywhere:
    (data_root, patterns, None), exactly what the ExampleGens used before spans existed.
    """
    from components import paths

    templates = [paths.join(data_root, p) for p in patterns]
    if not any(has_placeholder(t) for t in templates):
        if has_placeholder(data_root):
            raise InputError(f"{data_root} holds a span placeholder but no input file does: "
                             f"{templates}")
        return data_root, list(patterns), None
    base = common_base([data_root] + templates)
    return base, [relative(t, base) for t in templates], relative(data_root, base)


def fill(template: str, span: int | None, version: int | None) -> str:
    """`template` with its `{SPAN}` / `{VERSION}` placeholders (with width) replaced."""
    def value(match):
        number = span if match.group(1) == "SPAN" else version
        if number is None:
            raise InputError(f"{template}: no {match.group(1).lower()} to fill in")
        width = (match.group(2) or "")[1:]
        return str(number).zfill(int(width)) if width else str(number)

    return _PLACEHOLDER.sub(value, template)


def tokens(template: str, resolved: str) -> dict[str, str]:
    """The text each placeholder of `template` stands for in `resolved` (zero padding kept, as
    TFX keeps the matched token): `tokens("s-{SPAN}/a", "s-010/a") == {"SPAN": "010"}`."""
    pattern, last = "", 0
    for match in _PLACEHOLDER.finditer(template):
        pattern += re.escape(template[last:match.start()]) + f"(?P<{match.group(1)}>.+?)"
        last = match.end()
    found = re.fullmatch(pattern + re.escape(template[last:]), resolved)
    if not found:
        raise InputError(f"{resolved} does not match {template}")
    return found.groupdict()


def fill_tokens(template: str, found: dict[str, str]) -> str:
    """`template` with each placeholder replaced by the token `tokens` found for it."""
    return _PLACEHOLDER.sub(lambda m: found[m.group(1)], template)


def range_config(span: int | None):
    """A TFX RangeConfig for one fixed span (`data.span`), or None for the newest."""
    if span is None:
        return None
    from tfx.proto import range_config_pb2

    return range_config_pb2.RangeConfig(static_range=range_config_pb2.StaticRange(
        start_span_number=int(span), end_span_number=int(span)))


def resolve(templates: list[str], span: int | None = None,
            also: list[str] = ()) -> tuple[list[str], int, int | None]:
    """(templates + also, filled with the newest span/version found; that span; that version).

    The templates that hold a placeholder must match files or folders; all of them must agree
    on the newest span, as TFX requires of split patterns. `span` fixes the span (TFX's static
    range). `also` (e.g. an image folder) is filled, not searched. Without any placeholder: the
    paths unchanged, span 0, version None (TFX's values).
    """
    with_spans = [t for t in templates if has_placeholder(t)]
    if not with_spans:
        return list(templates) + list(also), 0, None
    from tfx.components.example_gen import utils
    from tfx.proto import example_gen_pb2

    base = common_base(with_spans)
    splits = [example_gen_pb2.Input.Split(name=f"path{i}", pattern=relative(t, base))
              for i, t in enumerate(with_spans)]
    try:
        _, found_span, found_version = utils.calculate_splits_fingerprint_span_and_version(
            base, splits, range_config(span))
    except ValueError as err:
        raise InputError(f"no span found for {with_spans}: {err}") from None
    found = {}
    for template, split in zip(with_spans, splits):  # TFX rewrote the patterns it matched
        found.update(tokens(relative(template, base), split.pattern))
    return ([fill_tokens(t, found) for t in list(templates) + list(also)], found_span,
            found_version)
