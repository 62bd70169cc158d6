"""A fitted estimator as a folder: JSON for configuration, safetensors for tensors, no pickle.

Layout::

    estimator.json      class, parameters, fitted metadata, format version, checksums
    head.safetensors    the head's weights
    tags/               a TagLibrary: tags.safetensors + manifest.json (backbone fingerprint)
    feature_tag.safetensors   only with a feature tag: its features, standardisation and projection
    frames.safetensors  only with DataFrame parameters (e.g. cell_line_features): their values as
                        float64; index and columns are in estimator.json
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from chemtag.tags import TagLibrary, file_sha256, read_versioned_json

FORMAT_VERSION = 1
_CONFIG_FILE = "estimator.json"
_HEAD_FILE = "head.safetensors"
_TAGS_FOLDER = "tags"
_FEATURE_TAG_FILE = "feature_tag.safetensors"
_FRAMES_FILE = "frames.safetensors"
# Fitted attributes that are plain JSON values (or numpy arrays written as lists).
_FITTED_JSON = ("template_", "fields_", "y_mean_", "y_scale_", "history_", "n_features_in_", "backbone_fingerprint_",
                "feature_ids_")
_FITTED_ARRAYS = ("classes_", "feature_names_in_")


def save_estimator(estimator, folder: str | Path) -> Path:
    """Write a fitted estimator into ``folder`` (created; existing files of the same names are replaced)."""
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(estimator, "tags_")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    library = TagLibrary(estimator.backbone_fingerprint_, estimator.tags_)
    library.save(folder / _TAGS_FOLDER)
    save_file({k: v.contiguous() for k, v in estimator.head_.items()}, folder / _HEAD_FILE)
    params = {name: str(value) if isinstance(value, Path) else value  # checkpoint_dir may be a Path
              for name, value in estimator.get_params(deep=False).items()}
    frames = {name: value for name, value in params.items() if isinstance(value, pd.DataFrame)}
    params = {name: value for name, value in params.items() if name not in frames}
    frames_json = {name: _frame_labels(frame) for name, frame in frames.items()}
    try:
        json.dumps([params, frames_json])
    except TypeError as error:
        raise TypeError(f"Parameters of {type(estimator).__name__} must be JSON values (or DataFrames with JSON "
                        f"labels) to save as a folder: {error}") from None
    fitted = {name: getattr(estimator, name) for name in _FITTED_JSON if hasattr(estimator, name)}
    fitted |= {name: getattr(estimator, name).tolist() for name in _FITTED_ARRAYS if hasattr(estimator, name)}
    config = {
        "format_version": FORMAT_VERSION,
        "class": type(estimator).__name__,
        "params": params,
        "tuple_params": sorted(name for name, value in params.items() if isinstance(value, tuple)),
        "fitted": fitted,
        "head_sha256": file_sha256(folder / _HEAD_FILE),
    }
    if frames:
        config["frames"] = frames_json
        values = {name: torch.from_numpy(np.array(frame, dtype=np.float64, order="C")) for name, frame in frames.items()}
        save_file(values, folder / _FRAMES_FILE)
        config["frames_sha256"] = file_sha256(folder / _FRAMES_FILE)
    if hasattr(estimator, "feature_tag_"):
        save_file({k: v.contiguous() for k, v in estimator.feature_tag_.items()}, folder / _FEATURE_TAG_FILE)
        config["feature_tag_sha256"] = file_sha256(folder / _FEATURE_TAG_FILE)
    (folder / _CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
    return folder


def load_estimator(folder: str | Path, expected_class: type | None = None):
    """Read an estimator written by :func:`save_estimator`; nothing is unpickled or executed."""
    from chemtag.estimators import ESTIMATORS

    folder = Path(folder)
    config_path = folder / _CONFIG_FILE
    config = read_versioned_json(config_path, "saved chemtag model", FORMAT_VERSION)
    cls = ESTIMATORS.get(config.get("class"))
    if cls is None:
        raise ValueError(f"{config_path} names an unknown estimator class {config.get('class')!r}.")
    if expected_class is not None and not issubclass(cls, expected_class):
        raise TypeError(f"{folder} holds a {cls.__name__}, not a {expected_class.__name__}.")
    params = cls.PARAMS_ADDED | config["params"]
    params |= {name: tuple(params[name]) for name in config.get("tuple_params", [])}  # JSON has lists only
    if "frames" in config:
        values = _checked_tensors(folder / _FRAMES_FILE, config["frames_sha256"])
        params |= {name: _frame(values[name].numpy(), labels) for name, labels in config["frames"].items()}
    estimator = cls(**params)
    fitted = config["fitted"]
    for name, value in fitted.items():
        setattr(estimator, name, np.asarray(value, dtype=object if name == "feature_names_in_" else None)
                if name in _FITTED_ARRAYS else value)
    estimator.tags_ = TagLibrary.load(folder / _TAGS_FOLDER, fitted["backbone_fingerprint_"]).tags
    estimator.head_ = _checked_tensors(folder / _HEAD_FILE, config["head_sha256"])
    if "feature_tag_sha256" in config:
        estimator.feature_tag_ = _checked_tensors(folder / _FEATURE_TAG_FILE, config["feature_tag_sha256"])
    estimator._run_on_the_cpu_if_the_device_is_absent()
    return estimator


def _checked_tensors(path: Path, sha256: str) -> dict[str, torch.Tensor]:
    """The tensors of the safetensors file ``path``, refused when it does not match its checksum."""
    if file_sha256(path) != sha256:
        raise ValueError(f"{path} does not match its checksum: the file is corrupted.")
    return load_file(path)


def _frame_labels(frame: pd.DataFrame) -> dict:
    """The labels of a DataFrame parameter, as written into estimator.json."""
    return {"index": frame.index.tolist(), "columns": frame.columns.tolist(),
            "index_name": frame.index.name, "columns_name": frame.columns.name}


def _frame(values: np.ndarray, labels: dict) -> pd.DataFrame:
    """A DataFrame parameter from its ``(n, f)`` values and its labels (see :func:`_frame_labels`)."""
    return pd.DataFrame(values, index=pd.Index(labels["index"], name=labels["index_name"]),
                        columns=pd.Index(labels["columns"], name=labels["columns_name"]))
