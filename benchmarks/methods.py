"""The methods compared: baselines, expert models, chemtag's preset and PEFT baselines on its backbone.

Every method builds a regressor with ``fit(X: DataFrame, y (n,))`` and ``predict(X) -> (n,)`` from a
:class:`Context` (task, budget, seed, backbone); the runner fits it on training rows only.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import pandas as pd
from sklearn.dummy import DummyRegressor
from sklearn.ensemble import HistGradientBoostingRegressor, RandomForestRegressor
from sklearn.linear_model import RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from benchmarks.chemprop_baseline import ChempropRegressor, environment_ready
from benchmarks.features import ExpertFeatures
from benchmarks.neural import DeepDTARegressor, DeepSynergyRegressor
from benchmarks.peft_baselines import PeftRegressor, ProbeRegressor
from benchmarks.tasks import Budget, Rows, Task, read_cell_expression


class Regressor(Protocol):
    def fit(self, X: pd.DataFrame, y: np.ndarray) -> "Regressor": ...

    def predict(self, X: pd.DataFrame) -> np.ndarray: ...


@dataclass(frozen=True)
class Context:
    """What a method is built for: the task, budget and rows, the seed, chemtag's backbone and its device, and
    ``chemtag_params``: estimator parameters every chemtag method sets over its own (e.g. ``pool_layers``)."""

    task: Task
    budget: Budget
    rows: Rows
    seed: int
    backbone: str
    data_dir: Path
    device: str = "cpu"
    chemtag_params: dict = field(default_factory=dict)

    @property
    def template(self) -> str:
        """The chemtag preset's prompt for this task."""
        return self.task.estimator().template

    def expert_features(self) -> ExpertFeatures:
        expression = read_cell_expression(self.data_dir) if self.task.columns("cell_line") else None
        return ExpertFeatures(self.task.inputs, expression)


@dataclass(frozen=True)
class Method:
    """A named way to build a regressor; ``tasks`` limits it to some tasks, ``requires`` names modules.

    ``environment_ready`` is set for methods that run in a separate environment of their own, which
    their first fit creates: it tells whether that environment is already there. A ``variant`` is another
    setting of chemtag's estimator (an ablation or an opt-in option): it runs when named, not by default,
    so that the default run stays short.
    """

    name: str
    description: str
    build: Callable[[Context], Regressor]
    tasks: tuple[str, ...] | None = None
    requires: tuple[str, ...] = ()
    environment_ready: Callable[[], bool] | None = None
    variant: bool = False

    def applies_to(self, task: Task) -> bool:
        return self.tasks is None or task.name in self.tasks

    def missing(self) -> list[str]:
        """Required modules that are not installed."""
        return [module for module in self.requires if importlib.util.find_spec(module) is None]


def gradient_boosting(rounds: int, seed: int) -> Regressor:
    """The ``gbm`` method's model on any features: LightGBM when installed, else scikit-learn's histogram
    gradient boosting."""
    if importlib.util.find_spec("lightgbm") is not None:
        from lightgbm import LGBMRegressor

        return LGBMRegressor(n_estimators=rounds, learning_rate=0.05, subsample=0.8, subsample_freq=1,
                             colsample_bytree=0.5, random_state=seed, n_jobs=2, verbose=-1)
    return HistGradientBoostingRegressor(max_iter=rounds, learning_rate=0.05, random_state=seed)


def _gradient_boosting(context: Context) -> Regressor:
    """:func:`gradient_boosting` on expert features."""
    return make_pipeline(context.expert_features(), gradient_boosting(context.budget.boosting_rounds, context.seed))


def _random_forest(context: Context) -> Regressor:
    forest = RandomForestRegressor(n_estimators=context.budget.forest_trees, max_features=0.33, n_jobs=2,
                                   random_state=context.seed)
    return make_pipeline(context.expert_features(), forest)


def _ridge(context: Context) -> Regressor:
    return make_pipeline(context.expert_features(), StandardScaler(), RidgeCV(alphas=np.logspace(-3, 5, 17)))


def _deepdta(context: Context) -> Regressor:
    protein_length = min(1200, context.rows.max_residues or 1200)
    return DeepDTARegressor(protein_length=protein_length, epochs=context.budget.neural_epochs,
                            random_state=context.seed)


def _deepsynergy(context: Context) -> Regressor:
    return DeepSynergyRegressor(read_cell_expression(context.data_dir), epochs=context.budget.neural_epochs,
                                random_state=context.seed)


def _chemprop(context: Context) -> Regressor:
    [smiles] = context.task.columns("molecule")
    return ChempropRegressor(smiles, epochs=context.budget.neural_epochs, random_state=context.seed)


def _chemtag(**params) -> Callable[[Context], Regressor]:
    """The task's preset; proteins are read with the extended IUPAC letters (a Davis kinase has an ``X``)."""
    return lambda context: context.task.estimator(
        backbone=context.backbone, max_epochs=context.budget.tag_epochs, batch_size=context.budget.batch_size,
        random_state=context.seed, device=context.device, protein_alphabet="extended", verbose=0,
        **params | context.chemtag_params)


def _chemtag_without_domain_tags(context: Context) -> Regressor:
    """The preset with its domain tags removed from the template and every input read as plain text.

    Without domain segments there is nothing to isolate: every field attends to the text before it, and
    the prefix cache shares only what prompts begin with (on Davis the protein, written first, is one
    piece per protein, but each drug is a piece per pair: a larger cache than the other arms')."""
    preset = context.task.estimator()
    domain_tags = re.compile(r"<(?:" + "|".join(map(re.escape, set(preset.domains.values()))) + r")>\s*")
    return _chemtag(domains={field: "Text" for field in preset.domains},
                    template=domain_tags.sub("", preset.template))(context)


def _chemtag_with_expression(context: Context) -> Regressor:
    return _chemtag(cell_line_features=read_cell_expression(context.data_dir))(context)


def _probe(pooling: str) -> Callable[[Context], Regressor]:
    return lambda context: ProbeRegressor(context.template, context.backbone, pooling)


def _peft(method: str) -> Callable[[Context], Regressor]:
    return lambda context: PeftRegressor(context.template, context.backbone, method, epochs=context.budget.peft_epochs,
                                         batch_size=context.budget.batch_size, random_state=context.seed)


METHODS: dict[str, Method] = {method.name: method for method in [
    Method("mean", "predicts the training mean", lambda context: DummyRegressor()),
    Method("gbm", "LightGBM (else sklearn HistGradientBoosting) on Morgan counts [+ AA/dipeptide composition] "
                  "[+ cell-line expression]", _gradient_boosting),
    Method("random-forest", "random forest on the same features", _random_forest),
    Method("ridge", "ridge regression on the same features, standardised (penalty by leave-one-out)", _ridge),
    Method("deepdta", "DeepDTA CNN-CNN, reimplemented in torch", _deepdta, tasks=("ba-davis",)),
    Method("deepsynergy", "DeepSynergy-style MLP, torch", _deepsynergy, tasks=("dc-oneil",)),
    Method("chemprop", "chemprop 2.3.1's default MPNN, run by the chemprop CLI in its own environment",
           _chemprop, tasks=("qed",), environment_ready=environment_ready),
    Method("chemtag", "chemtag's preset estimator (function tag + linear head on the frozen backbone, reading the "
                      "function tag's and each domain field's mean state)", _chemtag()),
    Method("chemtag-readout-only", "chemtag with the head on the function tag's state only, as in Tag-LLM "
                                   "(pool_fields=False)", _chemtag(pool_fields=False), variant=True),
    Method("chemtag-final-layer", "chemtag with the field means of the final hidden state only "
                                  "(pool_layers=(-1,); the default before 2026-11-27 19:52 UTC)",
           _chemtag(pool_layers=(-1,)), variant=True),
    Method("chemtag-three-layers", "chemtag with the field means of layers an eighth of the way up, halfway and "
                                   "the final one (pool_layers=(0.125, 0.5, 1.0); the default from 2026-11-27 "
                                   "19:52 UTC until 2026-11-28 06:22 UTC)", _chemtag(pool_layers=(0.125, 0.5, 1.0)),
           variant=True),
    Method("chemtag-kernel", "chemtag with the kernel ridge head on the trained tags' states (head='kernel': "
                             "keeps every training row's state)", _chemtag(head="kernel"), variant=True),
    Method("chemtag-refit", "chemtag with the head fitted again in closed form after every epoch instead of "
                            "trained by AdamW (head_training='refit')", _chemtag(head_training="refit"), variant=True),
    Method("chemtag-init-tags", "chemtag with domain tags at Tag-LLM's initialisation instead of the shipped "
                                "stage-1 tags (stage-3 ablation)", _chemtag(domain_tags=None), variant=True),
    Method("chemtag-no-domain-tags", "chemtag with no domain tags: inputs written as plain text in the same "
                                     "template (stage-3 ablation; no domain field to pool, so compare it with "
                                     "chemtag-readout-only)", _chemtag_without_domain_tags, variant=True),
    Method("chemtag-average", "chemtag trained on the given drug order, averaging both orders at prediction "
                              "only (pair_order='average'; the default 'augment' also trains on both)",
           _chemtag(pair_order="average"), tasks=("dc-oneil",), variant=True),
    Method("chemtag-joint", "chemtag without isolated domain segments (isolate_segments=False): each SMILES "
                            "attends to the text before it, so the prefix cache holds a piece per leading drug",
           _chemtag(isolate_segments=False), tasks=("dc-oneil",), variant=True),
    Method("chemtag-huber", "chemtag trained on the Huber loss (loss='huber': linear beyond one standard deviation "
                            "of the targets), for heavy-tailed synergy scores", _chemtag(loss="huber"),
           tasks=("dc-oneil",), variant=True),
    Method("chemtag-expression", "chemtag with the cell lines' expression as a projected feature tag",
           _chemtag_with_expression, tasks=("dc-oneil",), variant=True),
    Method("probe-mean", "ridge on the frozen backbone's mean-pooled final hidden state", _probe("mean")),
    Method("probe-last", "ridge on the frozen backbone's last-token final hidden state", _probe("last")),
    Method("prompt-tuning", "peft prompt tuning (p virtual tokens) + linear head", _peft("prompt-tuning"),
           requires=("peft",)),
    Method("lora", "peft LoRA (r=8, attention projections) + linear head", _peft("lora"), requires=("peft",)),
]}
