"""Cheap labels computed from structure: RDKit's QED for molecules, Biopython descriptors for proteins."""

from __future__ import annotations

from typing import Iterable

import numpy as np
from Bio.SeqUtils.ProtParam import ProteinAnalysis
from rdkit import Chem
from rdkit.Chem import QED

from chemtag.validation import normalised_protein

PROTEIN_DESCRIPTORS = {
    "gravy": lambda a: a.gravy(),                       # mean Kyte-Doolittle hydropathy per residue
    "isoelectric_point": lambda a: a.isoelectric_point(),  # pH units
    "instability_index": lambda a: a.instability_index(),  # Guruprasad et al. 1990; > 40 means unstable
    "aromaticity": lambda a: a.aromaticity(),           # fraction of F, W, Y
    "molecular_weight": lambda a: a.molecular_weight(),  # daltons
}
DEFAULT_PROTEIN_DESCRIPTOR = "gravy"


def qed(smiles: Iterable[str]) -> np.ndarray:
    """RDKit's quantitative estimate of drug-likeness (0..1) for each SMILES; invalid SMILES raise."""
    values = []
    for position, text in enumerate(smiles):
        molecule = Chem.MolFromSmiles(text)
        if molecule is None:
            raise ValueError(f"Invalid SMILES at position {position}: {text!r}.")
        values.append(QED.qed(molecule))
    return np.asarray(values)


def protein_descriptor(sequences: Iterable[str], name: str = DEFAULT_PROTEIN_DESCRIPTOR) -> np.ndarray:
    """A Biopython ``ProteinAnalysis`` descriptor for each sequence (standard amino acids only).

    ``name`` is one of :data:`PROTEIN_DESCRIPTORS`; the default, ``"gravy"``, is the grand average
    of hydropathy (Kyte & Doolittle 1982), a per-residue mean that any sequence length supports.
    """
    if name not in PROTEIN_DESCRIPTORS:
        raise ValueError(f"Unknown descriptor {name!r}; choose one of {sorted(PROTEIN_DESCRIPTORS)}.")
    values = []
    for position, text in enumerate(sequences):
        sequence = normalised_protein(text)
        if sequence is None:
            raise ValueError(f"Invalid protein sequence at position {position}: {text!r}.")
        values.append(PROTEIN_DESCRIPTORS[name](ProteinAnalysis(sequence)))
    return np.asarray(values, dtype=np.float64)
