"""Input domains: how each kind of input is checked, normalised and written into a prompt."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from chemtag.representations import CANONICAL, MAX_LENGTHS
from chemtag.validation import MAX_SMILES_LENGTH, canonical_smiles, normalised_protein, plain_text


@dataclass(frozen=True)
class Domain:
    """A kind of input. ``tag`` is the domain tag written before it (``None`` for plain text);
    ``normalise`` returns the canonical text or ``None`` for an invalid value; ``hint`` says what
    valid values look like; text longer than ``max_length`` characters is refused unparsed."""

    name: str
    tag: str | None
    normalise: Callable[[object], str | None]
    hint: str = ""
    max_length: int | None = None


def _protein(alphabet: str) -> Callable[[object], str | None]:
    return lambda value: normalised_protein(value, alphabet)


DOMAINS: dict[str, Domain] = {
    "SMILES": Domain("SMILES", "SMILES", canonical_smiles, "RDKit could not parse them. ", MAX_SMILES_LENGTH),
    "Protein": Domain("Protein", "Protein", _protein("standard"),
                      "Sequences must use the 20 standard amino-acid letters (protein_alphabet='extended' also allows BZJUOX). "),
    "Text": Domain("Text", None, plain_text, "Values must be non-empty, and numbers finite (no NaN or inf). "),
    "SELFIES": Domain("SELFIES", "SELFIES", CANONICAL["SELFIES"], "They do not decode to a molecule RDKit can parse. ",
                      MAX_LENGTHS["SELFIES"]),
    "InChI": Domain("InChI", "InChI", CANONICAL["InChI"], "RDKit could not read them as InChI ('InChI=1S/...'). ",
                    MAX_LENGTHS["InChI"]),
    "Formula": Domain("Formula", "Formula", CANONICAL["Formula"],
                      "Formulas are element symbols with counts and an optional charge, e.g. 'C9H8O4' or 'C2H3O2-'. ",
                      MAX_LENGTHS["Formula"]),
}

TAGGED_DOMAINS = tuple(name for name, domain in DOMAINS.items() if domain.tag)  # domains written after a tag


def get_domain(name: str, protein_alphabet: str = "standard") -> Domain:
    """The domain called ``name``; ``protein_alphabet`` picks the letters a protein may use."""
    if name == "Protein" and protein_alphabet != "standard":
        return Domain("Protein", "Protein", _protein(protein_alphabet), DOMAINS["Protein"].hint)
    try:
        return DOMAINS[name]
    except KeyError:
        raise ValueError(f"Unknown domain {name!r}; known domains are {sorted(DOMAINS)}.") from None
