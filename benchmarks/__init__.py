"""chemtag's benchmark suite: chemtag's estimators against expert models and PEFT baselines.

    python -m benchmarks run --task ba-davis --budget quick
    python -m benchmarks run --task all --budget quick --methods mean,gbm,chemtag
    python -m benchmarks list

Every method of a run is fitted on the same training rows with the same seed and scored on the same
test rows; see :mod:`benchmarks.tasks` for the datasets and splits and :mod:`benchmarks.methods` for
the methods.
"""
