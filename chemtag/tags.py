"""Tags: ``p x d`` trainable input vectors, and a library that stores them as safetensors + JSON.

A *domain* tag (``<SMILES>``, ``<Protein>``) stands before each piece of specialised input; a
*function* tag (``<QED>``, ``<BA>``) stands at the end of the prompt and carries the task.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file

from chemtag.backbones import Backbone

TagKind = Literal["domain", "function"]
TAG_KINDS = ("domain", "function")
DEFAULT_TAG_LENGTH = 10
FORMAT_VERSION = 1
_TENSORS_FILE = "tags.safetensors"
_MANIFEST_FILE = "manifest.json"


def initial_tag_vectors(embedding_weight: torch.Tensor, length: int = DEFAULT_TAG_LENGTH) -> torch.Tensor:
    """Tag-LLM's initialisation: the mean vocabulary embedding rescaled to the mean embedding norm.

    ``embedding_weight`` ``(vocab, d)`` -> ``(length, d)`` float32, every row identical (positions
    break the symmetry during training).
    """
    weight = embedding_weight.detach().float()
    mean = weight.mean(dim=0)
    scaled = mean * (weight.norm(dim=1).mean() / mean.norm().clamp_min(1e-12))
    return scaled.expand(length, -1).clone()


@dataclass
class Tag:
    """A named tag: ``vectors`` of shape ``(p, d)``, its kind and where it came from."""

    name: str
    kind: TagKind
    vectors: torch.Tensor
    provenance: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in TAG_KINDS:
            raise ValueError(f"Tag kind must be one of {TAG_KINDS}, got {self.kind!r}.")
        if self.vectors.ndim != 2:
            raise ValueError(f"Tag vectors must have shape (p, d), got {tuple(self.vectors.shape)}.")

    @property
    def length(self) -> int:
        return self.vectors.shape[0]

    @classmethod
    def initialise(cls, name: str, kind: TagKind, backbone: Backbone, length: int = DEFAULT_TAG_LENGTH) -> "Tag":
        vectors = initial_tag_vectors(backbone.model.get_input_embeddings().weight, length)
        return cls(name, kind, vectors, {"init": "mean-vocabulary-embedding"})


class TagLibrary:
    """Named tags for one backbone, saved as ``tags.safetensors`` plus ``manifest.json``.

    Loading never unpickles: tensors come from safetensors, metadata from JSON, and a library
    recorded for another backbone is refused.
    """

    def __init__(self, fingerprint: dict, tags: dict[str, Tag] | None = None):
        self.fingerprint = dict(fingerprint)
        self.tags: dict[str, Tag] = dict(tags or {})

    def __contains__(self, name: str) -> bool:
        return name in self.tags

    def __getitem__(self, name: str) -> Tag:
        try:
            return self.tags[name]
        except KeyError:
            raise KeyError(f"No tag {name!r} in this library; it holds {sorted(self.tags)}.") from None

    def add(self, tag: Tag) -> None:
        if tag.vectors.shape[1] != self.fingerprint["hidden_size"]:
            raise ValueError(
                f"Tag {tag.name!r} has width {tag.vectors.shape[1]}, the backbone "
                f"{self.fingerprint['name']!r} has hidden size {self.fingerprint['hidden_size']}."
            )
        self.tags[tag.name] = tag

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {name: tag.vectors.detach().float().contiguous().cpu() for name, tag in self.tags.items()}
        save_file(tensors, folder / _TENSORS_FILE)
        manifest = {
            "format_version": FORMAT_VERSION,
            "backbone": self.fingerprint,
            "tensors_sha256": file_sha256(folder / _TENSORS_FILE),
            "tags": {
                name: {"kind": tag.kind, "length": tag.length, "width": tag.vectors.shape[1],
                       "provenance": tag.provenance}
                for name, tag in self.tags.items()
            },
        }
        (folder / _MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        return folder

    @classmethod
    def load(cls, folder: str | Path, backbone: Backbone | dict | None = None) -> "TagLibrary":
        """Read a library; with ``backbone`` (or its fingerprint), refuse one made for another model."""
        folder = Path(folder)
        manifest = read_versioned_json(folder / _MANIFEST_FILE, "tag library", FORMAT_VERSION)
        if backbone is not None:
            expected = backbone.fingerprint if isinstance(backbone, Backbone) else backbone
            check_fingerprint(manifest["backbone"], expected, source=str(folder))
        tensors_path = folder / _TENSORS_FILE
        if file_sha256(tensors_path) != manifest["tensors_sha256"]:
            raise ValueError(f"{tensors_path} does not match the checksum in its manifest: the file is corrupted.")
        tensors = load_file(tensors_path)
        tags = {
            name: Tag(name, meta["kind"], tensors[name], meta.get("provenance", {}))
            for name, meta in manifest["tags"].items()
        }
        return cls(manifest["backbone"], tags)


def read_versioned_json(path: Path, what: str, supported_version: int) -> dict:
    """The JSON at ``path``; a missing file, one that is not JSON, or a format version newer than
    ``supported_version`` is a clear error (``what`` names the kind of folder, e.g. "tag library")."""
    if not path.is_file():
        raise FileNotFoundError(f"{path.parent} is not a {what}: {path.name} is missing.")
    try:
        content = json.loads(path.read_text())
    except ValueError as error:  # invalid JSON or UTF-8
        raise ValueError(f"{path} is not valid JSON ({error}): the file is corrupted.") from None
    version = content.get("format_version")
    if not isinstance(version, int) or version > supported_version:
        raise ValueError(
            f"{path} has format version {version!r}; this chemtag reads versions up to {supported_version}. "
            f"Upgrade chemtag to load it."
        )
    return content


def check_fingerprint(recorded: dict, expected: dict, source: str) -> None:
    """Raise a clear ``ValueError`` when tags recorded for one backbone meet another."""
    keys = ("name", "revision", "config_sha256", "vocab_size", "hidden_size")
    differences = [f"{k}: {recorded.get(k)!r} != {expected.get(k)!r}" for k in keys if recorded.get(k) != expected.get(k)]
    if differences:
        raise ValueError(
            f"The tags in {source} were trained for backbone {recorded.get('name')!r}, not for "
            f"{expected.get('name')!r} ({'; '.join(differences)}). Tags only work on the backbone they were trained on."
        )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
