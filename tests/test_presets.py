"""Each task preset fits and predicts on a slice of the shared data with the tiny backbone."""

import gzip
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from Bio import SeqIO

import chemtag.estimators._base as estimator_base
from chemtag import BindingAffinityRegressor, DrugComboRegressor, ProteinDescriptorRegressor, QEDRegressor
from chemtag.descriptors import protein_descriptor, qed
from chemtag.prefix_cache import PrefixCache

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FAST = dict(backbone="tiny-llama", max_epochs=1, verbose=0, validation_fraction=0)

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data is not present")


def _proteins(n: int) -> list[str]:
    with gzip.open(DATA / "proteins.fasta.gz", "rt") as handle:
        sequences = [str(record.seq) for record in SeqIO.parse(handle, "fasta")]
    return [s for s in sequences if len(s) < 300][:n]


def test_qed_regressor_on_moses_smiles_with_rdkit_labels():
    smiles = pd.read_csv(DATA / "smiles_moses_100k.txt.gz", header=None, nrows=24)[0].tolist()
    model = QEDRegressor(**FAST).fit(pd.DataFrame({"Drug": smiles[:16]}), qed(smiles[:16]))
    predictions = model.predict(smiles[16:])
    assert predictions.shape == (8,) and np.isfinite(predictions).all()


def test_protein_descriptor_regressor_on_the_protein_corpus():
    sequences = _proteins(12)
    model = ProteinDescriptorRegressor(**FAST).fit(sequences[:8], protein_descriptor(sequences[:8]))
    assert np.isfinite(model.predict(pd.DataFrame({"Target": sequences[8:]}))).all()


def test_binding_affinity_regressor_on_a_davis_slice_with_tdc_columns():
    davis = pd.read_csv(DATA / "davis.csv.gz", nrows=400)
    davis = davis[davis["Target"].str.len() < 400].head(12)
    model = BindingAffinityRegressor(**FAST).fit(davis, davis["Y"])
    assert model.fields_ == {"Target": "Protein", "Drug": "SMILES"}
    assert np.isfinite(model.predict(davis)).all()


def test_binding_affinity_regressor_reads_renamed_columns_and_arrays():
    davis = pd.read_csv(DATA / "davis.csv.gz", nrows=400)
    davis = davis[davis["Target"].str.len() < 400].head(6)
    renamed = davis.rename(columns={"Drug": "smiles", "Target": "sequence"})
    model = BindingAffinityRegressor(columns={"Drug": "smiles", "Target": "sequence"}, **FAST).fit(renamed, davis["Y"])
    by_array = BindingAffinityRegressor(**FAST).fit(davis[["Target", "Drug"]].to_numpy(), davis["Y"])
    np.testing.assert_allclose(model.predict(renamed), by_array.predict(davis[["Target", "Drug"]].to_numpy()))


@pytest.mark.parametrize("pair_order", ["average", "augment", "as_given"])
def test_drug_combo_regressor_on_an_oneil_slice(pair_order):
    oneil = pd.read_csv(DATA / "oneil.csv.gz", nrows=12)
    model = DrugComboRegressor(pair_order=pair_order, **FAST).fit(oneil, oneil["Y"])
    assert np.isfinite(model.predict(oneil)).all()


@pytest.mark.parametrize("pair_order", ["augment", "average"])
def test_drug_combo_predictions_are_symmetric_in_the_drug_pair(pair_order):
    oneil = pd.read_csv(DATA / "oneil.csv.gz", nrows=12)
    swapped = oneil.rename(columns={"Drug1": "Drug2", "Drug2": "Drug1"})
    model = DrugComboRegressor(pair_order=pair_order, **FAST).fit(oneil, oneil["Y"])
    np.testing.assert_allclose(model.predict(oneil), model.predict(swapped), rtol=1e-6)
    as_given = DrugComboRegressor(pair_order="as_given", **FAST).fit(oneil, oneil["Y"])
    assert not np.allclose(as_given.predict(oneil), as_given.predict(swapped))


def test_drug_combo_predicts_the_mean_of_both_drug_orders_in_one_pass(monkeypatch):
    oneil = pd.read_csv(DATA / "oneil.csv.gz", nrows=12)
    model = DrugComboRegressor(pair_order="average", **FAST).fit(oneil, oneil["Y"])
    passes, original_predict = [], estimator_base.predict
    monkeypatch.setattr(estimator_base, "predict",
                        lambda model, prompts, *args, **kwargs: passes.append(len(prompts))
                        or original_predict(model, prompts, *args, **kwargs))
    averaged = model.predict(oneil)
    assert passes == [2 * len(oneil)], "both orders of every row go through one prediction pass"
    model.set_params(pair_order="as_given")
    swapped = oneil.rename(columns={"Drug1": "Drug2", "Drug2": "Drug1"})
    np.testing.assert_allclose(averaged, (model.predict(oneil) + model.predict(swapped)) / 2, rtol=1e-4, atol=1e-4)


def _recorded_training_groups(monkeypatch, oneil, **params) -> tuple[int, list[int] | None]:
    """The number of prompts a DrugComboRegressor fit trains on and the groups it gives ``train``, numbered
    in order of first appearance."""
    seen, original_train = [], estimator_base.train

    def recording_train(model, prompts, *args, groups=None, **kwargs):
        seen.append((len(prompts), None if groups is None else pd.factorize(groups)[0].tolist()))
        return original_train(model, prompts, *args, groups=groups, **kwargs)

    monkeypatch.setattr(estimator_base, "train", recording_train)
    DrugComboRegressor(**params, **FAST).fit(oneil, oneil["Y"])
    return seen[0]


def _oneil_rows_of_three_pairs() -> pd.DataFrame:
    """Six O'Neil rows: two rows of each of three drug pairs, one of them in the other drug order."""
    oneil = pd.read_csv(DATA / "oneil.csv.gz", nrows=400)
    rows = oneil.groupby(["Drug1", "Drug2"], sort=False).head(2).head(6).reset_index(drop=True)
    rows.loc[5, ["Drug1", "Drug2"]] = rows.loc[5, ["Drug2", "Drug1"]].to_numpy()
    return rows


@pytest.mark.parametrize("pair_order", ["average", "augment", "as_given"])
def test_drug_combo_keeps_each_unordered_pair_in_one_group_for_validation(monkeypatch, pair_order):
    oneil = _oneil_rows_of_three_pairs()
    n_prompts, groups = _recorded_training_groups(monkeypatch, oneil, pair_order=pair_order)
    pairs = [0, 0, 1, 1, 2, 2]
    assert (n_prompts, groups) == ((12, pairs * 2) if pair_order == "augment" else (6, pairs))


def test_drug_combo_without_validation_by_pair_groups_only_the_two_orders_of_a_row(monkeypatch):
    oneil = _oneil_rows_of_three_pairs()
    assert _recorded_training_groups(monkeypatch, oneil, pair_order="augment", validation_by_pair=False) \
        == (12, list(range(6)) * 2)
    assert _recorded_training_groups(monkeypatch, oneil, pair_order="average", validation_by_pair=False) == (6, None)


def test_drug_combo_trains_on_both_drug_orders_by_default(monkeypatch):
    assert DrugComboRegressor().pair_order == "augment"
    assert _recorded_training_groups(monkeypatch, _oneil_rows_of_three_pairs())[0] == 12


def _cached_smiles_pieces(monkeypatch, oneil: pd.DataFrame, **params) -> int:
    """How many pieces holding SMILES tokens the prefix cache of a DrugComboRegressor fit computes."""
    caches, original_compute = [], PrefixCache.compute
    monkeypatch.setattr(PrefixCache, "compute", lambda cache, *args, **kwargs: caches.append(cache)
                        or original_compute(cache, *args, **kwargs))
    DrugComboRegressor(**params, **FAST).fit(oneil, oneil["Y"])
    [cache] = caches
    return sum(cache.prompts.segments[piece.row][piece.begin:piece.end].any() for piece in cache.pieces)


def test_drug_combo_caches_each_drug_once_per_slot_by_default(monkeypatch):
    oneil = _oneil_rows_of_three_pairs()
    drugs = len(set(oneil["Drug1"]) | set(oneil["Drug2"]))  # each in both slots: training sees both orders
    assert _cached_smiles_pieces(monkeypatch, oneil) == 2 * drugs
    assert _cached_smiles_pieces(monkeypatch, oneil, isolate_segments=False) > 2 * drugs


def test_drug_combo_with_too_few_pairs_to_validate_on_trains_without_early_stopping():
    oneil = pd.read_csv(DATA / "oneil.csv.gz", nrows=12)  # one drug pair in twelve cell lines
    message = ("validation_fraction=0.25 holds out no usable validation set from 24 rows in 1 group kept "
               "together; training on all rows for max_epochs=1 without early stopping.")  # both drug orders
    with pytest.warns(UserWarning, match=re.escape(message)):
        model = DrugComboRegressor(**FAST | {"validation_fraction": 0.25}).fit(oneil, oneil["Y"])
    assert "valid_loss" not in model.history_[0]


def test_drug_combo_refuses_an_unknown_pair_order():
    oneil = pd.read_csv(DATA / "oneil.csv.gz", nrows=4)
    with pytest.raises(ValueError, match="pair_order must be one of"):
        DrugComboRegressor(pair_order="sorted", **FAST).fit(oneil, oneil["Y"])
    with pytest.raises(ValueError, match="validation_by_pair must be True or False, got 'yes'"):
        DrugComboRegressor(validation_by_pair="yes", **FAST).fit(oneil, oneil["Y"])
