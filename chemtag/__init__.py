"""chemtag: a frozen LLM conditioned by learned tags (Tag-LLM), behind scikit-learn estimators."""

from chemtag.backbones import DEFAULT_BACKBONE, Backbone, load_backbone
from chemtag.estimators import (
    BindingAffinityRegressor,
    DrugComboRegressor,
    MoleculeTranslator,
    ProteinDescriptorRegressor,
    QEDRegressor,
    TagLLMClassifier,
    TagLLMGenerator,
    TagLLMRegressor,
)
from chemtag.tags import Tag, TagLibrary
from chemtag.templates import Template
from chemtag.validation import InvalidInputError

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_BACKBONE", "Backbone", "load_backbone", "Tag", "TagLibrary", "Template", "InvalidInputError",
    "TagLLMRegressor", "TagLLMClassifier", "QEDRegressor", "ProteinDescriptorRegressor",
    "BindingAffinityRegressor", "DrugComboRegressor",
    "TagLLMGenerator", "MoleculeTranslator",
]
