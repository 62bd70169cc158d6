"""Pretrained tags shipped with chemtag: one TagLibrary folder per backbone, found by fingerprint.

A library folder may also hold ``estimators/<class name>/``: stage-2 estimators (a function tag and
its head on top of the library's domain tags) saved with :meth:`TagLLMEstimator.save`.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

from chemtag.backbones import Backbone
from chemtag.tags import Tag, TagLibrary

logger = logging.getLogger(__name__)

SHIPPED = Path(__file__).parent
_WARNED: set[tuple[str, str]] = set()


def shipped_library(backbone: Backbone) -> TagLibrary | None:
    """The shipped library whose backbone fingerprint equals ``backbone``'s, or ``None``."""
    folder = _shipped_folder(backbone)
    return TagLibrary.load(folder, backbone.fingerprint) if folder else None


def _shipped_folder(backbone: Backbone) -> Path | None:
    """The shipped library folder whose manifest names ``backbone``'s fingerprint, or None."""
    for manifest in sorted(SHIPPED.glob("*/manifest.json")):
        if json.loads(manifest.read_text()).get("backbone") == backbone.fingerprint:
            return manifest.parent
    return None


def domain_tags(backbone: Backbone, names: list[str], source: str | Path | None, tag_length: int) -> list[Tag]:
    """Domain tags ``names`` for ``backbone``: from the shipped library (``source="pretrained"``), from a
    TagLibrary folder, or freshly initialised (``source=None``).

    A shipped tag that does not exist (or has another length) starts from the paper's initialisation,
    with one warning per backbone and tag; a tag missing from a user's folder is an error.
    """
    if source is None:
        return [Tag.initialise(name, "domain", backbone, tag_length) for name in names]
    if source == "pretrained":
        library = shipped_library(backbone)
    else:
        library = TagLibrary.load(source, backbone)
        missing = [name for name in names if name not in library]
        if missing:
            raise ValueError(f"The tag library {source} has no tags {missing}; it holds {sorted(library.tags)}.")
    tags = []
    for name in names:
        tag = library.tags.get(name) if library else None
        if tag is not None and tag.length == tag_length:
            tags.append(Tag(name, "domain", tag.vectors.clone(), dict(tag.provenance)))
            continue
        key = (backbone.name, name)
        if key not in _WARNED:
            _WARNED.add(key)
            reason = "none is shipped" if tag is None else f"the shipped one has length {tag.length}, not {tag_length}"
            warnings.warn(
                f"No pretrained <{name}> tag for backbone {backbone.name!r} ({reason}); starting from the "
                f"mean-embedding initialisation. Train one with `chemtag pretrain` for better results.", stacklevel=5,
            )
        tags.append(Tag.initialise(name, "domain", backbone, tag_length))
    return tags


def shipped_estimator_folder(backbone: Backbone, class_name: str) -> Path | None:
    """The shipped stage-2 estimator folder ``<library>/estimators/<class_name>`` for ``backbone``, or None."""
    library = _shipped_folder(backbone)
    folder = library / "estimators" / class_name if library else None
    return folder if folder is not None and folder.is_dir() else None
