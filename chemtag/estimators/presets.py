"""Task presets: Tag-LLM's templates with TDC column names and sensible defaults.

Each preset is a :class:`~chemtag.TagLLMRegressor` with other defaults for ``domains`` and
``template`` (whose last tag, e.g. ``<QED>``, is the function tag); every parameter can still be
set. Columns named as in TDC need no arguments; other names go through ``columns``, e.g.
``columns={"Drug": "smiles"}``. 2-D arrays are read with the columns in the order of the template's
fields.
"""

from __future__ import annotations

import numpy as np

from chemtag.estimators._signatures import derived_init
from chemtag.estimators.generic import TagLLMRegressor


class QEDRegressor(TagLLMRegressor):
    """SMILES -> QED (RDKit's drug-likeness, 0..1). Input column ``Drug``, as in TDC."""

    __init__ = derived_init(
        TagLLMRegressor, domains={"Drug": "SMILES"},
        template="Input: The SMILES of the molecule is <SMILES> {Drug}. Output: The QED is <QED>",
    )


class ProteinDescriptorRegressor(TagLLMRegressor):
    """Protein sequence -> a numeric descriptor. Input column ``Target``, as in TDC's DTI tables.

    Any per-protein number can be the target; :func:`chemtag.descriptors.protein_descriptor`
    computes labels (by default GRAVY, the grand average of hydropathy).
    """

    __init__ = derived_init(
        TagLLMRegressor, domains={"Target": "Protein"},
        template="Input: The protein sequence is <Protein> {Target}. Output: The descriptor is <Descriptor>",
    )


class BindingAffinityRegressor(TagLLMRegressor):
    """Protein + drug SMILES -> binding affinity (e.g. pKd). Columns ``Target`` and ``Drug``, as in TDC.

    Segments are isolated by default (Tag-LLM's regression layout): each protein and each SMILES is then
    computed once per fit and shared by all its pairs in the prefix cache.
    """

    __init__ = derived_init(
        TagLLMRegressor, domains={"Target": "Protein", "Drug": "SMILES"},
        template=("Input: The protein sequence is <Protein> {Target}. The SMILES of the drug is <SMILES> {Drug}. "
                  "Output: The binding affinity is <BA>"),
        isolate_segments=True,
    )


class DrugComboRegressor(TagLLMRegressor):
    """Two drug SMILES and a cell line -> synergy. Columns ``Drug1``, ``Drug2``, ``Cell_Line_ID`` (TDC).

    The cell line is written as text. The drug pair is unordered: ``pair_order="augment"`` trains on
    both orders (twice the rows) and predicts the mean over both, ``"average"`` trains on the given order
    and predicts the mean over both, ``"as_given"`` uses the order of the columns (see
    docs/estimators/drug_combo.md for what each measured).

    Segments are isolated by default, as in ``BindingAffinityRegressor``: the prefix cache then computes
    each drug once per fit in each of the two slots, however many partners and cell lines it appears with.

    ``validation_by_pair=True`` keeps all rows of one unordered drug pair (every cell line, both
    orders) on one side of the early-stopping validation split and in one fold of the head probe's
    cross-validation, so that model selection sees unseen pairs, as a test set split by pair does.
    ``False`` splits rows (both orders of a row still stay together), for predicting known pairs in
    other cell lines.

    ``cell_line_features``: optional DataFrame of numeric features per cell line, ``(n_cell_lines,
    n_features)``, indexed by the cell-line IDs of ``Cell_Line_ID`` (e.g. gene-expression z-scores:
    ``pd.read_csv(path, index_col="SAMPLE_NAME")``). Given, a fit standardises the features over the
    table's cell lines and projects each cell line's features into ``tag_length`` vectors (a trainable
    linear map that starts at the same vectors for every cell line), spliced in by the feature slot
    ``<{Cell_Line_ID}>`` right before the function tag, unless the template places it; rows whose
    cell line has no features are invalid input (``on_invalid``). The table is stored in the fitted
    model (``feature_ids_``, ``feature_tag_``): prediction, ``save`` and ``load`` need it no more, and a
    warm start keeps the fitted one.
    """

    __init__ = derived_init(
        TagLLMRegressor, domains={"Drug1": "SMILES", "Drug2": "SMILES", "Cell_Line_ID": "Text"},
        template=("Input: The SMILES of drug 1 is <SMILES> {Drug1}. The SMILES of drug 2 is <SMILES> {Drug2}. "
                  "The cell line is {Cell_Line_ID}. Output: The drug combination synergy is <DC>"),
        pair_order="augment", validation_by_pair=True, cell_line_features=None, isolate_segments=True,
    )
    _PAIR_ORDERS = ("augment", "average", "as_given")
    PARAMS_ADDED = TagLLMRegressor.PARAMS_ADDED | {"validation_by_pair": False}
    _field_features = ("Cell_Line_ID", "cell_line_features")

    def _check_params(self) -> None:
        super()._check_params()
        if self.pair_order not in self._PAIR_ORDERS:
            raise ValueError(f"pair_order must be one of {self._PAIR_ORDERS}, got {self.pair_order!r}.")
        if not isinstance(self.validation_by_pair, (bool, np.bool_)):
            raise ValueError(f"validation_by_pair must be True or False, got {self.validation_by_pair!r}.")

    def _training_rows(self, values: dict[str, list[str]], targets: np.ndarray):
        if self.validation_by_pair:
            groups = unordered_pairs(values["Drug1"], values["Drug2"])
        else:
            groups = np.arange(len(targets)) if self.pair_order == "augment" else None
        if self.pair_order != "augment":
            return values, targets, groups
        swapped = _swapped(values)
        return {k: values[k] + swapped[k] for k in values}, np.concatenate([targets, targets]), np.tile(groups, 2)

    def _prediction_rows(self, values: dict[str, list[str]]) -> list[dict[str, list[str]]]:
        """With ``pair_order`` "average" or "augment", both drug orders: the prediction is their mean."""
        return [values] if self.pair_order == "as_given" else [values, _swapped(values)]


def _swapped(values: dict[str, list[str]]) -> dict[str, list[str]]:
    """Rows' field values with the two drugs exchanged."""
    return values | {"Drug1": values["Drug2"], "Drug2": values["Drug1"]}


def unordered_pairs(first: list[str], second: list[str]) -> np.ndarray:
    """Each row's unordered pair ``{first[i], second[i]}`` as ``0 .. n_pairs - 1`` ``(n,)``."""
    keys = ["\n".join(sorted(pair)) for pair in zip(first, second)]
    return np.unique(keys, return_inverse=True)[1]
