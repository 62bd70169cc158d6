"""Concurrency and determinism.

Estimators share the process-wide backbone: two fitted one after another keep their own tags, and
predicting from two threads at once gives exactly what one thread gives. The same seed gives the same
predictions on the same machine, in this process and in a fresh one.
"""

import json
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from chemtag import QEDRegressor, TagLLMRegressor

FAST = dict(backbone="tiny-llama", max_epochs=2, verbose=0, validation_fraction=0)
SMILES = ["CCO", "c1ccccc1", "CC(=O)Oc1ccccc1C(=O)O", "Cn1cnc2c1c(=O)n(C)c(=O)n2C", "C1CC1", "CCN",
          "C[C@@H](O)c1ccccc1", "N#N", "OC(=O)/C=C/C(=O)O", "c1ccc2[nH]ccc2c1", "FC(F)(F)F", "CCCl"]
# Few distinct rows, each repeated: prediction runs the function tags against a prefix cache.
REPEATED = [smiles for smiles in SMILES[:3] for _ in range(6)]
ROUNDS = 40
WAIT_SECONDS = 60


@pytest.fixture(scope="module")
def pair():
    """A QED model, its tags and predictions as fitted, then a second model (another function tag, its
    SMILES tag trained too) fitted after it on the same backbone."""
    first = QEDRegressor(random_state=0, **FAST).fit(SMILES, np.linspace(0, 1, len(SMILES)))
    snapshot = {name: tag.vectors.clone() for name, tag in first.tags_.items()}, first.predict(SMILES)
    second = TagLLMRegressor({"Drug": "SMILES"}, "LogP", random_state=1, tune_domain_tags=True, **FAST)
    second.fit(pd.DataFrame({"Drug": SMILES}), np.linspace(3, -1, len(SMILES)))
    return first, second, snapshot


def test_estimators_share_the_backbone_but_not_their_tags(pair):
    first, second, (tags, predictions) = pair
    assert first._backbone() is second._backbone()
    assert set(first.tags_) == {"SMILES", "QED"} and set(second.tags_) == {"SMILES", "LogP"}
    for name, vectors in tags.items():
        torch.testing.assert_close(first.tags_[name].vectors, vectors, rtol=0, atol=0)
    assert not torch.equal(first.tags_["SMILES"].vectors, second.tags_["SMILES"].vectors)
    np.testing.assert_array_equal(first.predict(SMILES), predictions)


def _jobs(pair) -> list[tuple]:
    first, second, _ = pair
    return [(first, SMILES), (second, pd.DataFrame({"Drug": SMILES[::-1]})), (first, SMILES[:5])]


def test_two_threads_predict_exactly_what_one_thread_predicts(pair):
    jobs = _jobs(pair)
    expected = [model.predict(X) for model, X in jobs]
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [(i, pool.submit(model.predict, X)) for _ in range(ROUNDS) for i, (model, X) in enumerate(jobs)]
        for i, future in futures:
            np.testing.assert_array_equal(future.result(), expected[i])
    for (model, X), predictions in zip(jobs, expected):
        np.testing.assert_array_equal(model.predict(X), predictions)


def test_two_threads_predicting_from_prefix_caches_in_the_worst_interleaving(pair):
    """Thread 1 enters the prefix-attention block, thread 2 enters after it, thread 1 finishes its call
    while thread 2 waits at its first layer: a schedule the OS can choose, forced here."""
    first, second, _ = pair
    backbone = first._backbone()
    jobs = {"first": (first, REPEATED), "second": (second, pd.DataFrame({"Drug": REPEATED}))}
    expected = {name: model.predict(X) for name, (model, X) in jobs.items()}
    first_inside, second_inside, first_done = threading.Event(), threading.Event(), threading.Event()

    def pause(module, args, kwargs):
        if kwargs.get("chemtag_prefix") is None:
            return
        name = threading.current_thread().name
        if name == "first" and not first_inside.is_set():
            first_inside.set()
            second_inside.wait(WAIT_SECONDS)
        elif name == "second" and not second_inside.is_set():
            second_inside.set()
            first_done.wait(WAIT_SECONDS)

    results = {}

    def run(name):
        model, X = jobs[name]
        try:
            results[name] = model.predict(X)
        except Exception as error:  # noqa: BLE001 -- reported by the assertions below
            results[name] = error
        finally:
            if name == "first":
                first_inside.set()  # also when it never paused
                first_done.set()

    config = backbone.model.config
    implementation = config._attn_implementation
    handle = backbone.model.base_model.layers[0].register_forward_pre_hook(pause, with_kwargs=True)
    try:
        threads = {name: threading.Thread(target=run, args=(name,), name=name) for name in jobs}
        threads["first"].start()
        assert first_inside.wait(WAIT_SECONDS)
        threads["second"].start()
        for thread in threads.values():
            thread.join(WAIT_SECONDS)
    finally:
        handle.remove()
        config._attn_implementation = implementation
    for name, predictions in expected.items():
        assert isinstance(results[name], np.ndarray), f"thread {name!r} failed: {results[name]!r}"
        np.testing.assert_array_equal(results[name], predictions)


_FIT_AND_PREDICT = """
import json, sys, warnings
import numpy as np, torch
warnings.simplefilter("ignore")
torch.set_num_threads(int(sys.argv[1]))
from chemtag import QEDRegressor
smiles = json.loads(sys.argv[2])
model = QEDRegressor(backbone="tiny-llama", max_epochs=3, verbose=0, random_state=int(sys.argv[3]))
model.fit(smiles, np.linspace(0, 1, len(smiles)))
print(json.dumps(model.predict(smiles).tolist()))
"""


def _fit_and_predict_in_a_fresh_process(threads: int, seed: int) -> np.ndarray:
    command = [sys.executable, "-c", _FIT_AND_PREDICT, str(threads), json.dumps(SMILES), str(seed)]
    result = subprocess.run(command, capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1])
    return np.asarray(json.loads(result.stdout))


def test_same_seed_same_predictions_in_this_process_and_a_fresh_one():
    """The estimator's default path (prefix cache, early stopping on a validation split) on two threads.
    JSON carries floats exactly (shortest round-trip repr), so equality is bitwise."""
    threads = 2
    torch.set_num_threads(threads)  # the autouse fixture restores the count afterwards
    fits = [QEDRegressor(backbone="tiny-llama", max_epochs=3, verbose=0, random_state=seed).fit(
        SMILES, np.linspace(0, 1, len(SMILES))) for seed in (0, 0, 1)]
    predictions = [model.predict(SMILES) for model in fits]
    np.testing.assert_array_equal(predictions[0], predictions[1])
    assert not np.array_equal(predictions[0], predictions[2])
    np.testing.assert_array_equal(_fit_and_predict_in_a_fresh_process(threads, seed=0), predictions[0])
