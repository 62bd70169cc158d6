"""Input domains: how each kind of input is checked, normalised and written into a prompt."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from chemtag.validation import canonical_smiles, normalised_protein, plain_text


@dataclass(frozen=True)
class Domain:
    """A kind of input. ``tag`` is the domain tag written before it (``None`` for plain text);
    ``normalise`` returns the canonical text or ``None`` for an invalid value; ``hint`` says what
    valid values look like."""

    name: str
    tag: str | None
    normalise: Callable[[object], str | None]
    hint: str = ""


def _protein(alphabet: str) -> Callable[[object], str | None]:
    return lambda value: normalised_protein(value, alphabet)


DOMAINS: dict[str, Domain] = {
    "SMILES": Domain("SMILES", "SMILES", canonical_smiles, "RDKit could not parse them. "),
    "Protein": Domain("Protein", "Protein", _protein("standard"),
                      "Sequences must use the 20 standard amino-acid letters (protein_alphabet='extended' also allows BZJUOX). "),
    "Text": Domain("Text", None, plain_text, "Values must be non-empty, and numbers finite (no NaN or inf). "),
}


def get_domain(name: str, protein_alphabet: str = "standard") -> Domain:
    """The domain called ``name``; ``protein_alphabet`` picks the letters a protein may use."""
    if name == "Protein" and protein_alphabet != "standard":
        return Domain("Protein", "Protein", _protein(protein_alphabet), DOMAINS["Protein"].hint)
    try:
        return DOMAINS[name]
    except KeyError:
        raise ValueError(f"Unknown domain {name!r}; known domains are {sorted(DOMAINS)}.") from None
