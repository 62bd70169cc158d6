"""The scikit-learn estimator over a tagged backbone, shared by regressors and classifiers."""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import warnings
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from chemtag import pretrained
from chemtag.backbones import DEFAULT_BACKBONE, Backbone, device_available, load_backbone
from chemtag.domains import get_domain
from chemtag.estimators._inputs import (
    Allowed, FeatureTable, as_frame, has_column_names, read_feature_table, read_fields,
)
from chemtag.feature_tags import FeatureTag
from chemtag.heads import LinearHead
from chemtag.kernel_head import KERNEL_STATE_PREFIX, KernelHead
from chemtag.model import DEFAULT_POOL_LAYERS, EARLY_LAYERS, TaggedModel, pooled_layer_numbers
from chemtag.parallel import ONE_PROCESS, Processes
from chemtag.tags import DEFAULT_TAG_LENGTH, Tag, initial_tag_vectors
from chemtag.templates import Template, TemplateEncoder, with_domain_tag, with_feature_slot
from chemtag.prefix_cache import DEFAULT_MEMORY_BYTES
from chemtag.training import TrainingConfig, check_head_training, predict, train, trained_through_cache
from chemtag.validation import ON_INVALID, PROTEIN_ALPHABETS

DEFAULT_FUNCTION_TAG = "Output"  # the default template's, where function_tag is None

logger = logging.getLogger(__name__)


def is_positive_integer(value) -> bool:
    """Whether ``value`` is an integer of at least 1, a bool not counting as one."""
    return not isinstance(value, bool) and isinstance(value, (int, np.integer)) and value >= 1


class TagLLMEstimator(BaseEstimator):
    """Base of chemtag's estimators: input columns -> domains -> a tagged prompt -> a head.

    Subclasses set ``_classification`` and implement ``_head_size``, ``_encode_targets(y, n_rows, keep)``
    (targets of the rows ``keep`` that are trained on) and ``_loss``. Parameters are documented on :class:`~chemtag.TagLLMRegressor`.

    A subclass may set ``_field_features`` to ``(field, parameter)``: the parameter may hold a table of
    numeric features per value of the field (see :func:`~chemtag.estimators._inputs.read_feature_table`),
    which a fit turns into a feature tag (:class:`~chemtag.feature_tags.FeatureTag`) spliced in at the
    feature slot ``<{field}>``, written right before the function tag unless the template places it.
    """

    _classification = False
    _field_features: tuple[str, str] | None = None
    PARAMS_ADDED = {"pool_fields": False, "pool_layers": (-1,)}
    """Parameters added after the first release, with the value that reproduces a model saved without them."""

    def __init__(
        self,
        domains: Mapping[str, str] | None = None,
        function_tag: str | None = None,
        template: str | None = None,
        columns: Mapping[str, str] | None = None,
        *,
        backbone: str = DEFAULT_BACKBONE,
        tag_length: int = DEFAULT_TAG_LENGTH,
        domain_tags: str | None = "pretrained",
        tune_domain_tags: bool = False,
        isolate_segments: bool = False,
        pool_fields: bool = True,
        pool_layers: Sequence[int | float] | str = DEFAULT_POOL_LAYERS,
        max_epochs: int = 20,
        batch_size: int = 16,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        validation_fraction: float = 0.1,
        patience: int = 5,
        head_training: str = "joint",
        max_length: int | None = None,
        on_invalid: str = "raise",
        protein_alphabet: str = "standard",
        bf16: bool = False,
        device: str = "cpu",
        random_state: int | None = 0,
        warm_start: bool = False,
        checkpoint_dir: str | Path | None = None,
        cache_memory_bytes: int = DEFAULT_MEMORY_BYTES,
        verbose: int = 1,
    ):
        self.domains = domains
        self.function_tag = function_tag
        self.template = template
        self.columns = columns
        self.backbone = backbone
        self.tag_length = tag_length
        self.domain_tags = domain_tags
        self.tune_domain_tags = tune_domain_tags
        self.isolate_segments = isolate_segments
        self.pool_fields = pool_fields
        self.pool_layers = pool_layers
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.head_training = head_training
        self.max_length = max_length
        self.on_invalid = on_invalid
        self.protein_alphabet = protein_alphabet
        self.bf16 = bf16
        self.device = device
        self.random_state = random_state
        self.warm_start = warm_start
        self.checkpoint_dir = checkpoint_dir
        self.cache_memory_bytes = cache_memory_bytes
        self.verbose = verbose

    # ----------------------------------------------------------------- sklearn protocol
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.string = True
        tags.input_tags.two_d_array = True
        tags.input_tags.allow_nan = False
        tags.non_deterministic = False
        return tags

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_model", None)  # holds the shared backbone; rebuilt from tags_ and head_ on demand
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(self.PARAMS_ADDED | state)
        self._run_on_the_cpu_if_the_device_is_absent()

    def _run_on_the_cpu_if_the_device_is_absent(self) -> None:
        """Loaded where its ``device`` is absent (fitted on a GPU, loaded on a CPU machine), the estimator
        runs on the CPU, with a warning: its tags and head are stored on the CPU (as skorch does)."""
        if not device_available(self.device):
            warnings.warn(f"This {type(self).__name__} was saved with device={self.device!r}, which this machine "
                          f"lacks; it runs on the CPU (device='cpu').", stacklevel=3)
            self.device = "cpu"

    def set_params(self, **params):
        self.__dict__.pop("_model", None)  # parameters such as isolate_segments shape the model built from tags_
        return super().set_params(**params)

    @contextlib.contextmanager
    def _unchanged_if_failed(self):
        """Run a fit: if it raises (bad input, a missing device, a refused checkpoint, ...), the estimator
        is left as it was, an earlier fit intact, rather than half refitted."""
        before = self.__dict__.copy()
        try:
            yield
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(before)
            self.__dict__.pop("_model", None)  # a warm start may have trained it partly; rebuilt from tags_
            raise

    def save(self, folder: str | Path) -> Path:
        """Write the fitted estimator as safetensors + JSON into ``folder`` (no backbone weights, no pickle)."""
        from chemtag.persistence import save_estimator

        return save_estimator(self, folder)

    @classmethod
    def load(cls, folder: str | Path) -> "TagLLMEstimator":
        """Read an estimator written by :meth:`save`; the folder's class must be ``cls`` or a subclass."""
        from chemtag.persistence import load_estimator

        return load_estimator(folder, expected_class=cls)

    @classmethod
    def pretrained(cls, backbone: str = DEFAULT_BACKBONE, **params) -> "TagLLMEstimator":
        """The fitted ``cls`` shipped with chemtag for ``backbone`` (stage 2 of the protocol), ready to
        predict; ``params`` replace saved parameters that do not change the model (e.g. ``device``,
        ``verbose``, ``batch_size``). Raises ``LookupError`` where none is shipped."""
        folder = pretrained.shipped_estimator_folder(load_backbone(backbone), cls.__name__)
        if folder is None:
            raise LookupError(f"No pretrained {cls.__name__} is shipped for backbone {backbone!r}; fit one instead.")
        return cls.load(folder).set_params(**params)

    def with_domain(self, field: str, domain: str, domain_tags: str | Path | None = "pretrained") -> "TagLLMEstimator":
        """A fitted copy that reads ``field`` as ``domain`` input, with no training (zero-shot composition).

        The domain tag before ``field`` becomes ``<domain>``, taken from ``domain_tags`` as in :meth:`fit`
        (the tags shipped for the backbone, a tag library folder, or ``None`` for the initialisation);
        the function tag, the head and the rest of the prompt are kept. E.g. a QED model trained on SMILES
        predicts from SELFIES: ``QEDRegressor.pretrained().with_domain("Drug", "SELFIES")``. The copy's
        parameters name the new domain, so refitting a clone of it trains on that domain.
        """
        check_is_fitted(self, "tags_")
        if field not in self.fields_:
            raise ValueError(f"{field!r} is not an input field of this model; its fields are {list(self.fields_)}.")
        new_tag, old_tag = get_domain(domain).tag, get_domain(self.fields_[field]).tag
        if new_tag is None or old_tag is None:
            raise ValueError(f"Only a field behind a domain tag can change domain: {field!r} is "
                             f"{self.fields_[field]} input and {domain!r} has {'a' if new_tag else 'no'} tag.")
        backbone = self._backbone()
        function_tag = Template.parse(self.template_).function_tag
        composed = copy.deepcopy(self)  # without the backbone: see __getstate__
        composed.fields_ = self.fields_ | {field: domain}
        composed.template_ = with_domain_tag(self.template_, field, new_tag)
        composed.set_params(
            domains=dict(composed.fields_), domain_tags=domain_tags,
            template=with_domain_tag(self.template, field, new_tag) if self.template else None,
        )
        kept = {name: tag for name, tag in self.tags_.items()
                if name in Template.parse(composed.template_).tag_names}
        added = pretrained.domain_tags(backbone, [new_tag], domain_tags, self.tags_[function_tag].length)
        composed.tags_ = kept | {tag.name: tag for tag in added if tag.name not in kept}
        return composed

    # ----------------------------------------------------------------- fit / predict
    def fit(self, X, y):
        """Train the function tag (and head) on ``X`` (rows of inputs) and targets ``y``; returns self."""
        return self._fit(X, y, ONE_PROCESS)

    def _fit(self, X, y, processes: Processes):
        """:meth:`fit`, run data-parallel by every one of ``processes`` alike (see :func:`~chemtag.training.train`)."""
        with self._unchanged_if_failed():
            self._check_params()
            warm = self.warm_start and hasattr(self, "tags_")
            features = None if warm else self._feature_table()
            frame = as_frame(X, self._declared_fields())
            fields = self._fields(frame)
            source = (self.template_ if warm
                      else self._with_feature_slot(self.template or self._default_template(fields)))
            template = Template.parse(source)
            if not warm:
                self._check_feature_slots(template, features)
            feature_ids = getattr(self, "feature_ids_", None) if warm else getattr(features, "ids", None)
            allowed = self._allowed(template, feature_ids)
            values, invalid = read_fields(frame, fields, self._columns(frame), self.protein_alphabet, self.on_invalid,
                                          allowed)
            if invalid.all():  # nothing left to train on: raise the message that names the rows
                read_fields(frame, fields, self._columns(frame), self.protein_alphabet, "raise", allowed)
            keep = np.flatnonzero(~invalid)
            targets = self._encode_targets(y, len(frame), keep)
            if invalid.any():
                warnings.warn(f"Dropping {invalid.sum()} of {len(frame)} rows with invalid input before fitting.",
                              stacklevel=3)
                values = {field: [v[i] for i in keep] for field, v in values.items()}
            values, targets, groups = self._training_rows(values, targets)
            if not warm:
                self._record_input_shape(X, frame)
                self.fields_ = dict(fields)
                self.template_ = source
            self._check_template(template)
            backbone = self._backbone()
            model = self._model_from_fitted(backbone) if warm else self._new_model(backbone, template, features)
            if isinstance(model.head, KernelHead):  # a warm start trains on from its linear head
                model.head = model.head.base
            prompts = self._encoder(template, model).encode(values)
            self._check_lengths(prompts.lengths[: len(keep)], backbone, keep)
            config = self._training_config(len(targets), groups)
            self._check_head_fits(len(targets), backbone)
            self.history_ = train(model, prompts, torch.as_tensor(targets), self._loss, config,
                                  history=self.history_ if warm else None, processes=processes, groups=groups,
                                  kept_readouts=self._head_fitter(model, targets, groups))
            self._store_fitted(model, backbone)
            return self

    def _predict_outputs(self, X) -> np.ndarray:
        """Head outputs ``(n, k)`` for ``X``; rows with invalid input (``on_invalid="nan"``) are NaN."""
        check_is_fitted(self, "tags_")
        frame = as_frame(X, list(self.fields_))
        self._check_columns_at_predict(X, frame)
        template = Template.parse(self.template_)
        values, invalid = read_fields(frame, self.fields_, self._columns(frame), self.protein_alphabet, self.on_invalid,
                                      self._allowed(template, getattr(self, "feature_ids_", None)))
        if invalid.any():
            logger.warning("%d of %d rows have invalid input; their predictions are NaN.", invalid.sum(), len(frame))
        backbone = self._backbone()
        model = self._model_from_fitted(backbone)
        outputs = np.full((len(frame), self._head_size()), np.nan)
        keep = np.flatnonzero(~invalid)
        if len(keep):
            readings = self._prediction_rows({field: [v[i] for i in keep] for field, v in values.items()})
            prompts = self._encoder(template, model).encode(
                {field: [value for reading in readings for value in reading[field]] for field in values}
            )
            self._check_lengths(prompts.lengths.reshape(len(readings), -1).max(axis=0), backbone, keep)
            joined = predict(model, prompts, self.batch_size, self.bf16, self.verbose - 1,
                             self._prefix_cache_at_predict(), self.cache_memory_bytes).numpy()
            outputs[keep] = joined.reshape(len(readings), len(keep), -1).mean(axis=0)
        return outputs

    def _prefix_cache_at_predict(self) -> bool | None:
        """:func:`~chemtag.training.predict`'s ``prefix_cache``: ``False`` for a bf16 model whose fit ran without
        the cache (bfloat16 rounds the two paths differently), else ``None`` (predict's own choice)."""
        return False if self.bf16 and trained_through_cache(self.history_) is False else None

    # ----------------------------------------------------------------- pieces
    def _check_params(self) -> None:
        if self.on_invalid not in ON_INVALID:
            raise ValueError(f"on_invalid must be one of {ON_INVALID}, got {self.on_invalid!r}.")
        if self.protein_alphabet not in PROTEIN_ALPHABETS:
            raise ValueError(f"protein_alphabet must be one of {sorted(PROTEIN_ALPHABETS)}, got {self.protein_alphabet!r}.")
        if not isinstance(self.cache_memory_bytes, (int, np.integer)) or self.cache_memory_bytes < 0:
            raise ValueError(f"cache_memory_bytes must be a non-negative integer, got {self.cache_memory_bytes!r}.")
        for name in ("tag_length", "batch_size", "patience"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if not isinstance(self.max_epochs, (int, np.integer)) or self.max_epochs < 0:
            raise ValueError(f"max_epochs must be a non-negative integer, got {self.max_epochs!r}.")
        check_head_training(self.head_training)
        layers = self.pool_layers
        named = isinstance(layers, str) and layers == EARLY_LAYERS
        if not named and (not isinstance(layers, (tuple, list)) or not layers or any(
                isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) for v in layers)):
            raise ValueError(f"pool_layers must be {EARLY_LAYERS!r} or a non-empty sequence of layer numbers (int) or "
                             f"fractions of the backbone's depth (float), got {layers!r}.")
        if not 0 <= self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must be in [0, 1), got {self.validation_fraction!r}.")
        for name in ("lr", "weight_decay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
                    or not 0 <= value < math.inf:
                raise ValueError(f"{name} must be a finite non-negative number, got {value!r}.")
        if self.max_length is not None and not is_positive_integer(self.max_length):
            raise ValueError(f"max_length must be a positive integer or None (the backbone's limit), "
                             f"got {self.max_length!r}.")

    def _training_config(self, n_rows: int, groups: np.ndarray | None = None) -> TrainingConfig:
        """How to train on ``n_rows`` rows (in ``groups`` ``(n_rows,)`` where given), from the estimator's
        parameters."""
        return TrainingConfig(
            max_epochs=self.max_epochs, batch_size=self.batch_size, lr=self.lr, weight_decay=self.weight_decay,
            validation_fraction=self._validation_fraction(n_rows, groups), patience=self.patience,
            head_training=self.head_training, bf16=self.bf16,
            verbose=self.verbose, random_state=self.random_state, checkpoint_dir=self.checkpoint_dir,
            cache_memory_bytes=self.cache_memory_bytes,
        )

    def _validation_fraction(self, n_rows: int, groups: np.ndarray | None = None) -> float:
        """``validation_fraction``, or 0 with a warning when it would hold out no group of rows or every one
        (a group is a row without ``groups``)."""
        n_groups = n_rows if groups is None else len(np.unique(groups))
        if self.validation_fraction and not 1 <= round(n_groups * self.validation_fraction) < n_groups:
            source = (f"{n_rows} rows" if groups is None
                      else f"{n_rows} rows in {n_groups} group{'s' * (n_groups != 1)} kept together")
            warnings.warn(
                f"validation_fraction={self.validation_fraction} holds out no usable validation set from {source}; "
                f"training on all rows for max_epochs={self.max_epochs} without early stopping.", stacklevel=5,
            )
            return 0.0
        return self.validation_fraction

    def _training_rows(self, values: dict[str, list[str]], targets: np.ndarray
                       ) -> tuple[dict[str, list[str]], np.ndarray, np.ndarray | None]:
        """Training rows made from the validated ones, their targets and, where a preset defines them, each
        row's group ``(n,)``: rows of one group stay on one side of the validation split and in one fold
        of the head probe's cross-validation (e.g. both orders of a drug pair)."""
        return values, targets, None

    def _prediction_rows(self, values: dict[str, list[str]]) -> list[dict[str, list[str]]]:
        """The readings of the validated rows whose head outputs are averaged into a prediction (e.g. both
        drug orders); all are predicted in one pass, so they share the prefix cache."""
        return [values]

    def _check_head_fits(self, n_rows: int, backbone: Backbone) -> None:
        """Refuse, before training, a head that cannot be fitted to ``n_rows`` training rows on ``backbone``'s
        device (see :meth:`_head_fitter`)."""

    def _head_fitter(self, model: TaggedModel, targets: np.ndarray,
                     groups: np.ndarray | None) -> Callable[[torch.Tensor], None] | None:
        """Where the estimator replaces the trained model's head by one fitted to the kept tags' readouts of
        the training prompts (``targets`` and ``groups`` as given to ``train``), the function that fits it
        to those readouts ``(n, d)`` (``train``'s ``kept_readouts``); None where it keeps the trained head."""
        return None

    def _declared_fields(self) -> list[str] | None:
        """Field names in order when the user declared them (used to name array columns): the template's
        fields in its order, else the keys of ``domains``."""
        if self.template:
            return list(Template.parse(self._with_feature_slot(self.template)).fields)
        if self.domains:
            return list(self.domains)
        return None

    def _fields(self, frame) -> dict[str, str]:
        """Template field -> domain name. Undeclared columns are plain text (all of them without ``domains``)."""
        if self.domains:
            fields = dict(self.domains)
        else:
            fields = {column: "Text" for column in frame.columns}
        for domain in fields.values():
            get_domain(domain)  # unknown domains fail here, before any compute
        if self.template:
            template_fields = Template.parse(self._with_feature_slot(self.template)).fields
            if not template_fields:
                raise ValueError(f"The template {self.template!r} has no fields, so no input would reach the model; "
                                 "name the input columns in braces, e.g. '<SMILES> {Drug}'.")
            unknown = [field for field in fields if field not in template_fields] if self.domains else []
            unmapped = [field for field in template_fields if field not in fields]
            if unknown and unmapped:  # e.g. a misspelt field, whose input would silently be read as text
                raise ValueError(f"domains names fields {unknown} that the template does not have, and the template's "
                                 f"fields {unmapped} have no domain (they would be read as text).")
            fields = {field: fields.get(field, "Text") for field in template_fields}
        return fields

    # ----------------------------------------------------------------- feature tags
    def _feature_table(self) -> FeatureTable | None:
        """The checked table of the ``_field_features`` parameter, or None where it is not given."""
        if self._field_features is None:
            return None
        name = self._field_features[1]
        table = getattr(self, name)
        return None if table is None else read_feature_table(table, name)

    def _with_feature_slot(self, source: str) -> str:
        """``source`` with the feature slot of ``_field_features`` before its function tag when its table is given."""
        if self._field_features is None or getattr(self, self._field_features[1]) is None:
            return source
        return with_feature_slot(source, self._field_features[0])

    def _check_feature_slots(self, template: Template, features: FeatureTable | None) -> None:
        """A template's feature slots need a feature table; a table needs a slot to enter the prompt."""
        if template.feature_fields and features is None:
            raise ValueError(f"The template {template.source!r} has feature slots but no feature table is given"
                             + (f" (pass {self._field_features[1]})." if self._field_features else "."))
        if features is not None and not template.feature_fields:
            raise ValueError(f"{self._field_features[1]} is given but the template {template.source!r} has no "
                             f"feature slot <{{{self._field_features[0]}}}> for it.")

    def _allowed(self, template: Template, feature_ids: list[str] | None) -> dict[str, Allowed]:
        """Feature-slot fields -> the IDs that have features: rows with other values are invalid input."""
        if feature_ids is None:
            return {}
        table = self._field_features[1] if self._field_features else "the feature table"
        hint = f"There are no features for these IDs in {table}. "
        return {field: Allowed(set(feature_ids), hint) for field in template.feature_fields}

    def _columns(self, frame) -> Mapping[str, str] | None:
        return self.columns

    def _default_template(self, fields: Mapping[str, str]) -> str:
        parts = []
        for field, domain_name in fields.items():
            tag = get_domain(domain_name).tag
            parts.append(f"{field}: <{tag}> {{{field}}}." if tag else f"{field}: {{{field}}}.")
        return "Input: " + " ".join(parts) + f" Output: <{self.function_tag or DEFAULT_FUNCTION_TAG}>"

    def _check_template(self, template: Template) -> None:
        if self.function_tag is not None and self.function_tag != template.function_tag:
            raise ValueError(f"function_tag is {self.function_tag!r} but the template's function tag (its last tag) is "
                             f"<{template.function_tag}>; make them agree or leave function_tag=None.")
        for field, tag in template.domain_tags.items():
            domain = self.fields_.get(field)
            expected = get_domain(domain).tag if domain else None
            if expected and expected != tag:
                raise ValueError(f"Field {field!r} holds {domain} input but the template puts <{tag}> before it.")

    def _record_input_shape(self, X, frame) -> None:
        self.n_features_in_ = frame.shape[1]
        if hasattr(X, "columns") and all(isinstance(c, str) for c in X.columns):
            self.feature_names_in_ = np.asarray(X.columns, dtype=object)
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_

    def _check_columns_at_predict(self, X, frame) -> None:
        """Arrays must have the fitted column count; tables with column names need only the fields' columns."""
        if not has_column_names(X) and frame.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {frame.shape[1]} features, but {type(self).__name__} is expecting {self.n_features_in_} "
                f"features as input."
            )

    def _backbone(self) -> Backbone:
        return load_backbone(self.backbone, device=self.device)

    @staticmethod
    def _encoder(template: Template, model: TaggedModel) -> TemplateEncoder:
        return TemplateEncoder(template, model.backbone.tokenizer, model.tag_names, model.tag_length, model.feature_ids)

    def _check_lengths(self, lengths: np.ndarray, backbone: Backbone, rows: np.ndarray) -> None:
        """Refuse prompts over ``max_length`` (or the backbone's limit); ``rows`` are their positions in X."""
        limit = backbone.max_length if self.max_length is None else self.max_length
        if limit is None:
            return
        too_long = np.flatnonzero(lengths > limit)
        if len(too_long):
            shown = ", ".join(f"{rows[i]} ({lengths[i]} tokens)" for i in too_long[:5])
            raise ValueError(
                f"{len(too_long)} prompts are longer than the limit of {limit} tokens: rows {shown}. "
                f"Shorten these inputs or raise max_length (the backbone allows {backbone.max_length})."
            )

    def _new_model(self, backbone: Backbone, template: Template, features: FeatureTable | None) -> TaggedModel:
        domain_tag_names = [name for name in template.tag_names if name != template.function_tag]
        tags = pretrained.domain_tags(backbone, domain_tag_names, self.domain_tags, self.tag_length)
        tags.append(Tag.initialise(template.function_tag, "function", backbone, self.tag_length))
        trainable = [template.function_tag] + (domain_tag_names if self.tune_domain_tags else [])
        feature_tag = None if features is None else FeatureTag.initialise(
            features.ids, torch.from_numpy(features.values),
            initial_tag_vectors(backbone.model.get_input_embeddings().weight, self.tag_length),
        ).to(backbone.device)
        return self._tagged_model(backbone, template, tags, trainable, feature_tag)

    def _tagged_model(self, backbone: Backbone, template: Template, tags: list[Tag], trainable: list[str],
                      feature_tag: FeatureTag | None, head_state: dict[str, torch.Tensor] | None = None) -> TaggedModel:
        """The tagged model of ``template`` with a head that reads the pooled fields if ``pool_fields`` says so
        (loaded from ``head_state`` where given)."""
        pooled = template.domain_segments if self.pool_fields else 0
        layers = pooled_layer_numbers(self.pool_layers, backbone.num_layers)
        head = LinearHead(backbone.hidden_size, self._head_size(), blocks=1 + pooled * len(layers))
        if head_state is not None:
            if head_state["linear.weight"].shape != head.linear.weight.shape:
                raise ValueError(f"This model's head was fitted with other pool_fields or pool_layers (it reads "
                                 f"{head_state['linear.weight'].shape[1]} features, pool_fields={self.pool_fields} and "
                                 f"pool_layers={self.pool_layers} give {head.linear.weight.shape[1]}); set them back or "
                                 f"fit again (warm_start=False).")
            kernel = {k: v for k, v in head_state.items() if k.startswith(KERNEL_STATE_PREFIX)}
            head.load_state_dict({k: v for k, v in head_state.items() if k not in kernel})
            if kernel:
                head = KernelHead.from_state(head, kernel)
        return TaggedModel(backbone, tags, head.to(backbone.device), trainable, self.isolate_segments, feature_tag,
                           pooled_fields=pooled, pooled_layers=layers)

    def _model_from_fitted(self, backbone: Backbone) -> TaggedModel:
        model = getattr(self, "_model", None)
        if model is None or model.backbone is not backbone:
            trainable = [n for n, t in self.tags_.items() if t.kind == "function" or self.tune_domain_tags]
            feature_tag = (FeatureTag.from_state(self.feature_ids_, self.feature_tag_, backbone.hidden_size)
                           .to(backbone.device) if hasattr(self, "feature_tag_") else None)
            model = self._tagged_model(backbone, Template.parse(self.template_), list(self.tags_.values()), trainable,
                                       feature_tag, head_state=self.head_)
            self._model = model
        return model

    def _store_fitted(self, model: TaggedModel, backbone: Backbone) -> None:
        self.tags_ = model.export_tags()
        head = model.head
        state = head.base.state_dict() | head.kernel_state() if isinstance(head, KernelHead) else head.state_dict()
        self.head_ = {k: v.detach().cpu().clone() for k, v in state.items()}
        self._store_feature_tag(model.feature_tag)
        self.backbone_fingerprint_ = backbone.fingerprint
        self._model = model

    def _store_feature_tag(self, feature_tag: FeatureTag | None) -> None:
        """``feature_ids_`` and ``feature_tag_`` (its state) from the fitted feature tag; none without one."""
        if feature_tag is None:
            self.__dict__.pop("feature_ids_", None)
            self.__dict__.pop("feature_tag_", None)
            return
        self.feature_ids_ = list(feature_tag.ids)
        self.feature_tag_ = {k: v.detach().cpu().clone() for k, v in feature_tag.state_dict().items()}
