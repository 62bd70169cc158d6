"""Molecular languages: SMILES, SELFIES, InChI and molecular formulas, converted and compared with RDKit.

Every language has a canonical form, so that two texts name the same molecule (or formula) exactly
when their canonical forms are equal: RDKit's canonical SMILES, the SELFIES of that SMILES, the
standard InChI, and the formula in Hill order (carbon, hydrogen, then the other elements
alphabetically; without carbon all alphabetically) with RDKit's charge suffix (``+``, ``-2``).
A formula names a composition, not a molecule: it can be written from any other language but not
read back into one.
"""

from __future__ import annotations

import re
from typing import Callable

import selfies
from rdkit import Chem
from rdkit.Chem.rdMolDescriptors import CalcMolFormula

from chemtag.validation import MAX_SMILES_LENGTH, canonical_smiles, quiet_rdkit, stripped_text

LANGUAGES = ("SMILES", "SELFIES", "InChI", "Formula")
MOLECULE_LANGUAGES = ("SMILES", "SELFIES", "InChI")  # languages a molecule can be read back from
# Longest text read in each language, in characters: molecules of about the size the SMILES limit allows
# (RDKit writes SMILES recursively, and very long chains overflow the stack).
MAX_LENGTHS = {"SMILES": MAX_SMILES_LENGTH, "SELFIES": 4 * MAX_SMILES_LENGTH, "InChI": 4 * MAX_SMILES_LENGTH,
               "Formula": MAX_SMILES_LENGTH}
_ELEMENT_COUNT = re.compile(r"([A-Z][a-z]?)(\d*)")
_FORMULA = re.compile(r"((?:[A-Z][a-z]?\d*)+)([+-]\d*)?")  # element counts, then a charge
_ELEMENTS = frozenset(Chem.GetPeriodicTable().GetElementSymbol(number) for number in range(1, 119))


def _text(value: object, language: str) -> str | None:
    """``value`` stripped (see :func:`~chemtag.validation.stripped_text`), or ``None`` beyond the
    language's length limit."""
    text = stripped_text(value)
    return text if text is not None and len(text) <= MAX_LENGTHS[language] else None


def _molecule(smiles: object) -> Chem.Mol | None:
    text = _text(smiles, "SMILES")
    with quiet_rdkit():
        return Chem.MolFromSmiles(text) if text else None


def smiles_to_selfies(smiles: object) -> str | None:
    """SELFIES of the canonical form of ``smiles``, or ``None`` when either step fails."""
    canonical = canonical_smiles(smiles)
    if canonical is None:
        return None
    try:
        return selfies.encoder(canonical)
    except selfies.EncoderError:
        return None


def selfies_to_smiles(value: object) -> str | None:
    """Canonical SMILES of a SELFIES string, or ``None`` when it does not decode to a molecule."""
    text = _text(value, "SELFIES")
    if text is None:
        return None
    try:
        decoded = selfies.decoder(text)
    except selfies.DecoderError:
        return None
    return canonical_smiles(decoded) if decoded else None


def smiles_to_inchi(smiles: object) -> str | None:
    """Standard InChI of ``smiles``, or ``None``."""
    molecule = _molecule(smiles)
    with quiet_rdkit():
        return (Chem.MolToInchi(molecule) or None) if molecule is not None else None


def inchi_to_smiles(value: object) -> str | None:
    """Canonical SMILES of an InChI string, or ``None`` when RDKit cannot read it."""
    text = _text(value, "InChI")
    if text is None or not text.startswith("InChI="):
        return None
    with quiet_rdkit():
        molecule = Chem.MolFromInchi(text)
    return canonical_smiles(Chem.MolToSmiles(molecule, canonical=False)) if molecule is not None else None


def smiles_to_formula(smiles: object) -> str | None:
    """Molecular formula of ``smiles`` in Hill order (isotopes counted as their element), or ``None``."""
    molecule = _molecule(smiles)
    return CalcMolFormula(molecule) if molecule is not None else None


def canonical_formula(value: object) -> str | None:
    """``value`` rewritten in Hill order with repeated elements summed (``"OC2H6"`` -> ``"C2H6O"``),
    or ``None`` when it is not a formula of known elements."""
    match = _FORMULA.fullmatch(_text(value, "Formula") or "")
    if match is None:
        return None
    body, charge = match.groups()
    counts: dict[str, int] = {}
    for element, count in _ELEMENT_COUNT.findall(body):
        if element not in _ELEMENTS or count.startswith("0"):
            return None
        counts[element] = counts.get(element, 0) + int(count or 1)
    first = [element for element in ("C", "H") if element in counts] if "C" in counts else []
    order = first + sorted(element for element in counts if element not in first)
    return "".join(e + (str(counts[e]) if counts[e] > 1 else "") for e in order) + (charge or "")


def _canonical_selfies(value: object) -> str | None:
    smiles = selfies_to_smiles(value)
    return smiles_to_selfies(smiles) if smiles else None


def _canonical_inchi(value: object) -> str | None:
    smiles = inchi_to_smiles(value)
    return smiles_to_inchi(smiles) if smiles else None


CANONICAL: dict[str, Callable[[object], str | None]] = {
    "SMILES": canonical_smiles,
    "SELFIES": _canonical_selfies,
    "InChI": _canonical_inchi,
    "Formula": canonical_formula,
}
_TO_SMILES = {"SMILES": canonical_smiles, "SELFIES": selfies_to_smiles, "InChI": inchi_to_smiles}
_FROM_SMILES = {"SMILES": canonical_smiles, "SELFIES": smiles_to_selfies, "InChI": smiles_to_inchi,
                "Formula": smiles_to_formula}


def _check_language(language: str, allowed: tuple[str, ...] = LANGUAGES) -> None:
    if language not in allowed:
        raise ValueError(f"Unknown molecular language {language!r}; choose one of {list(allowed)}.")


def canonical(text: object, language: str) -> str | None:
    """The canonical form of ``text`` in ``language`` (see the module docstring), or ``None`` if invalid."""
    _check_language(language)
    return CANONICAL[language](text)


def convert(text: object, source: str, target: str) -> str | None:
    """``text`` in ``source`` written in ``target`` (canonical form), or ``None`` when it is invalid.

    Formulas can be a target only: a composition does not determine a molecule.
    """
    _check_language(source, MOLECULE_LANGUAGES)
    _check_language(target)
    smiles = _TO_SMILES[source](text)
    return _FROM_SMILES[target](smiles) if smiles else None


def same(predicted: object, expected: object, language: str) -> bool:
    """Whether two texts in ``language`` have the same, valid, canonical form."""
    found = canonical(predicted, language)
    return found is not None and found == canonical(expected, language)
