"""scikit-learn's own estimator checks, run on the generic estimators with the tiny backbone; all pass.

With ``domains=None`` every column is text, so the numeric checks feed numbers written as text.
"""

from sklearn.utils.estimator_checks import parametrize_with_checks

from chemtag import TagLLMClassifier, TagLLMRegressor

FAST = dict(backbone="tiny-llama", max_epochs=1, batch_size=32, verbose=0)


@parametrize_with_checks([TagLLMRegressor(**FAST), TagLLMClassifier(**FAST)])
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)
