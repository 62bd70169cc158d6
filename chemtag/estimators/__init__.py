"""scikit-learn estimators over a tagged, frozen LLM."""

from chemtag.estimators.generation import MoleculeTranslator, TagLLMGenerator
from chemtag.estimators.generic import TagLLMClassifier, TagLLMRegressor
from chemtag.estimators.presets import (
    BindingAffinityRegressor,
    DrugComboRegressor,
    ProteinDescriptorRegressor,
    QEDRegressor,
)

ESTIMATORS = {
    cls.__name__: cls
    for cls in (TagLLMRegressor, TagLLMClassifier, QEDRegressor, ProteinDescriptorRegressor,
                BindingAffinityRegressor, DrugComboRegressor,
                TagLLMGenerator, MoleculeTranslator)
}

__all__ = [*ESTIMATORS, "ESTIMATORS"]
