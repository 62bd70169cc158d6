"""The generic estimators: map columns to domains, name a function tag, fit."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch
from sklearn.base import ClassifierMixin, RegressorMixin
from tqdm.auto import tqdm

from chemtag.backbones import Backbone
from chemtag.estimators._base import TagLLMEstimator, is_positive_integer
from chemtag.estimators._signatures import derived_init
from chemtag.kernel_head import DEFAULT_LANDMARKS, KernelHead, check_kernel_memory
from chemtag.losses import REGRESSION_LOSSES, cross_entropy
from chemtag.model import TaggedModel
from chemtag.validation import validated_targets


class TagLLMRegressor(RegressorMixin, TagLLMEstimator):
    """Regression with a frozen LLM conditioned by tags (Tag-LLM).

    Each row of ``X`` is written into a prompt: every input column stands after its domain tag,
    and the function tag ends the prompt. The final hidden state at the function tag (and, with
    ``pool_fields``, each domain field's mean state) feeds a linear head. Only the function tag and
    the head are trained (domain tags too with ``tune_domain_tags=True``). Targets are standardised
    internally.

    Parameters
    ----------
    domains : dict, optional
        Input column -> domain: ``"SMILES"``, ``"Protein"`` or ``"Text"`` (written as is, no tag).
        By default every column is text. A 2-D array's columns are the template's fields in its order,
        or without a template the keys of ``domains`` in theirs.
    function_tag : str, optional
        Name of the task's function tag, e.g. ``"BA"`` writes ``<BA>`` at the end of the prompt; by default
        the template's last tag, or ``"Output"`` without a template. Given with a template, it must be
        the template's last tag.
    template : str, optional
        The prompt, e.g. ``"Input: The SMILES is <SMILES> {Drug}. Output: The QED is <QED>"``.
        Fields in braces name columns; by default one ``"column: <Domain> {column}."`` per column. Template
        fields that ``domains`` does not name are text (a ``domains`` key the template lacks while some of
        its fields have no domain is refused as a likely misspelling).
    columns : dict, optional
        Template field -> the column of ``X`` that holds it, when the names differ.
    backbone : str
        A Hugging Face Hub id or local folder, or ``"smollm2-135m"`` (the bundled default).
        Loaded once per process and shared.
    tag_length : int
        Vectors per tag, ``p``.
    domain_tags : "pretrained", a folder, or None
        Where the domain tags start from: the tags shipped for this backbone (found by its
        fingerprint; a missing one starts from Tag-LLM's initialisation with a warning), a
        :class:`~chemtag.tags.TagLibrary` folder, or ``None`` for the initialisation.
    tune_domain_tags : bool
        Also train the domain tags (by default they stay frozen).
    isolate_segments : bool
        Each ``<Domain> value`` segment attends only to itself, as in Tag-LLM's regression setting.
    pool_fields : bool
        The head reads, beside the final hidden state at the function tag, the mean hidden states over
        each domain field's tokens, one per layer of ``pool_layers`` (its input grows from ``d`` to
        ``(1 + fields * layers) * d``). Those states do not depend on the function tag, so with frozen
        domain tags they are computed once per fit, in the prefix cache. ``False`` reads the function tag
        only, as Tag-LLM does; see docs/training.md.
    pool_layers : "early" or sequence of int or float
        The hidden states whose field means the head reads. The default ``"early"`` reads every layer of
        the first quarter of the depth (rounded up) and the final state: layers 1-8 and 30 of the default
        backbone. Early layers keep what the field's tokens are, which properties such as hydropathy or
        drug-likeness follow closely; see docs/training.md. A sequence names layer numbers (1 is the first
        decoder layer's output, -1 the final state after the backbone's last norm) or fractions of the
        depth in (0, 1], rounded to the nearest layer (1.0 is the final state).
    max_epochs, batch_size, lr, weight_decay : training options (AdamW on tags and head, the learning rate
        rising linearly over the first 100 steps; the head is first fitted as a linear probe, epoch 0).
        ``max_epochs=0`` fits the head alone, to the states of the tags as they stand.
    validation_fraction : float
        Share of rows held out for early stopping (0 to train on all rows for ``max_epochs``).
    patience : int
        Epochs without validation improvement before stopping; the best epoch's weights are restored.
    head_training : {"joint", "refit"}
        After the probe, train the head with the tags by AdamW, or keep it fixed during each epoch and
        fit it again, as the probe is, to the moved tags' readouts after every epoch (costs one more
        forward pass over the training rows per epoch; see docs/training.md).
    max_length : int, optional
        Longest prompt in tokens; longer rows are refused with their positions. Default: the backbone's limit.
    on_invalid : {"raise", "nan"}
        Invalid SMILES or protein rows raise a ``ValueError`` naming them, or predict NaN
        (and are dropped from training with a warning).
    protein_alphabet : {"standard", "extended"}
        The 20 standard amino-acid letters, or also the IUPAC extras ``BZJUOX``.
    bf16 : bool
        Run the backbone under bfloat16 autocast (faster on recent CPUs and GPUs); tags stay float32.
    device : str
        Where the backbone runs, e.g. ``"cpu"`` or ``"cuda"``.
    random_state : int or None
        Seeds the head, the validation split and batch order: the same seed gives the same fit.
    warm_start : bool
        Continue from the fitted tags and head instead of starting afresh.
    checkpoint_dir : str or Path, optional
        A folder that receives a checkpoint after every epoch. A fit killed or interrupted midway and
        run again with the same data and parameters resumes after its last completed epoch and ends as
        an uninterrupted fit would; a completed fit run again returns its result without training.
        A folder holding another fit's checkpoint is refused: give each fit its own folder.
    cache_memory_bytes : int
        Memory for the prefix cache's keys/values (default 2 GiB), on the backbone's device (GPU memory
        for a GPU backbone, so that steps gather their prefixes without a copy); the rest goes to a
        temporary memory-mapped file. Raise it on machines with memory to spare, lower it on small ones.
    verbose : int
        0 silent, 1 a progress bar per epoch and a line of losses, 2 also for prediction.
    loss : {"squared_error", "huber"}
        What training, the head's initial probe and early stopping minimise: the squared error, or the
        Huber loss (squared within one standard deviation of the training targets, linear beyond), which
        lets heavy-tailed targets (e.g. drug-combination synergy) pull the fit less.
    head : {"linear", "kernel"}
        The head that predicts from the trained tags' states. ``"linear"`` is trained with the tags and
        stores ``(1 + fields * layers) * d + 1`` numbers. ``"kernel"`` then replaces it by kernel ridge
        (Laplacian or Gaussian kernel on the linear head's standardised inputs, squared error whatever
        ``loss``; kernel, width and penalty by 5-fold cross-validation over all training rows): one more pass
        over the training rows and a fitted model that keeps the states of the rows the kernel expands over
        (``4 * (1 + fields * layers) * d`` bytes a row). Up to ``kernel_landmarks`` training rows the fit is
        exact over all of them (``n²`` memory, ``n³`` time in ``n`` rows); beyond, it is Nyström's over
        ``kernel_landmarks`` rows drawn with ``random_state`` (``n·m`` memory, ``n·m²`` time in ``m``
        landmarks). It reads nonlinear structure the linear head misses, most where test inputs resemble
        training inputs (see docs/training.md).
    kernel_landmarks : int
        With ``head="kernel"``: training rows up to which the fit is exact, and the landmark rows of
        Nyström's fit beyond (default 4,096). More read more, most where the kernel works as a lookup of
        similar training rows; the fit holds about ``40 * n`` bytes per landmark, its time grows as ``n·m²``.

    Attributes
    ----------
    tags_ : dict of :class:`~chemtag.tags.Tag` -- the tags as trained, ``(p, d)`` each.
    head_ : dict of tensors -- the linear head's weights; with ``head="kernel"`` also the kernel head's
        (``kernel.``: training rows' features, coefficients, offset, chosen width and penalty).
    history_ : list of dict -- per epoch: ``train_loss``, ``valid_loss``, ``best``, ``seconds``.
    template_ : str -- the prompt used.
    fields_ : dict -- template field -> domain.
    n_features_in_, feature_names_in_ : the columns seen in ``fit``.
    """

    __init__ = derived_init(TagLLMEstimator, keyword_only=False, loss="squared_error", head="linear",
                            kernel_landmarks=DEFAULT_LANDMARKS)
    _HEADS = ("linear", "kernel")
    PARAMS_ADDED = TagLLMEstimator.PARAMS_ADDED | {"head": "linear", "kernel_landmarks": DEFAULT_LANDMARKS}

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.regressor_tags.poor_score = True  # one epoch on a few rows of numbers-as-text is no universal regressor
        return tags

    def _head_size(self) -> int:
        return 1

    def _encode_targets(self, y, n_rows: int, keep: np.ndarray) -> np.ndarray:
        targets = validated_targets(y, n_rows)[keep]
        if not (self.warm_start and hasattr(self, "y_mean_")):
            self.y_mean_ = float(targets.mean())
            self.y_scale_ = float(targets.std()) or 1.0
        return ((targets - self.y_mean_) / self.y_scale_).astype(np.float32)

    def _check_params(self) -> None:
        super()._check_params()
        if not isinstance(self.loss, str) or self.loss not in REGRESSION_LOSSES:
            raise ValueError(f"loss must be one of {tuple(REGRESSION_LOSSES)}, got {self.loss!r}.")
        if not isinstance(self.head, str) or self.head not in self._HEADS:
            raise ValueError(f"head must be one of {self._HEADS}, got {self.head!r}.")
        if not is_positive_integer(self.kernel_landmarks):
            raise ValueError(f"kernel_landmarks must be a positive integer, got {self.kernel_landmarks!r}.")

    def _check_head_fits(self, n_rows: int, backbone: Backbone) -> None:
        if self.head == "kernel":
            check_kernel_memory(n_rows, self.kernel_landmarks, backbone.device)

    def _head_fitter(self, model: TaggedModel, targets: np.ndarray,
                     groups: np.ndarray | None) -> Callable[[torch.Tensor], None] | None:
        if self.head != "kernel":
            return None

        def fit_kernel_head(readouts: torch.Tensor) -> None:
            started = time.perf_counter()
            device = model.backbone.device
            model.head, error = KernelHead.fit(model.head, readouts.to(device),
                                               torch.as_tensor(targets, device=device), groups,
                                               landmarks=self.kernel_landmarks, seed=self.random_state)
            if self.verbose > 0:
                chosen = ("too few rows to cross-validate" if np.isnan(error)
                          else f"cross-validated MSE {error:.4f} of the standardised targets")
                expansion = ("" if len(model.head.train_features) == len(readouts)
                             else f" over {len(model.head.train_features)} landmark rows")
                tqdm.write(f"kernel head on {len(readouts)} rows{expansion}: {model.head.kernel} kernel, width "
                           f"{model.head.width.item():g}, penalty {model.head.penalty.item():g} ({chosen}) in "
                           f"{time.perf_counter() - started:.1f}s")

        return fit_kernel_head

    @property
    def _loss(self):
        return REGRESSION_LOSSES[self.loss]

    def predict(self, X) -> np.ndarray:
        """Predicted targets, ``(n,)`` float64, in the units of ``y``."""
        return self._predict_outputs(X)[:, 0] * self.y_scale_ + self.y_mean_


class TagLLMClassifier(ClassifierMixin, TagLLMEstimator):
    """k-way classification with a frozen LLM conditioned by tags (Tag-LLM).

    Same parameters and attributes as :class:`TagLLMRegressor`; the head has one output per class
    and is trained with cross-entropy. ``classes_`` holds the labels seen in ``fit``.
    """

    _classification = True

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.poor_score = True
        return tags

    def _head_size(self) -> int:
        return len(self.classes_)

    def _encode_targets(self, y, n_rows: int, keep: np.ndarray) -> np.ndarray:
        labels = validated_targets(y, n_rows, classification=True)[keep]
        if not (self.warm_start and hasattr(self, "classes_")):
            self.classes_ = np.unique(labels)
        unseen = set(np.unique(labels)) - set(self.classes_)
        if unseen:
            raise ValueError(f"y has labels {sorted(unseen)} not seen in the first fit; refit with warm_start=False.")
        return np.searchsorted(self.classes_, labels).astype(np.int64)

    _loss = staticmethod(cross_entropy)

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, ``(n, n_classes)`` in the order of ``classes_``."""
        logits = torch.as_tensor(self._predict_outputs(X))
        return torch.softmax(logits, dim=1).numpy()

    def predict(self, X) -> np.ndarray:
        """Predicted labels ``(n,)``; raises if any row was invalid (no NaN label exists)."""
        probabilities = self.predict_proba(X)
        if np.isnan(probabilities).any():
            raise ValueError("Some rows have invalid input and no label can be predicted; use predict_proba to get NaN rows.")
        return self.classes_[probabilities.argmax(axis=1)]
