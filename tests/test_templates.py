"""Templates: parsing Tag-LLM prompts, and encoding them into token ids with tag slots at exact positions."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from tokenizers import Tokenizer, processors
from transformers import PreTrainedTokenizerFast

from chemtag.templates import Template, TemplateEncoder

BINDING = (
    "Input: The protein sequence is <Protein> {protein}. The SMILES of the drug is <SMILES> {smiles}. "
    "Output: The binding affinity is <BA>"
)
P = 3
TAG_ORDER = ["BA", "SMILES", "Protein"]  # table order differs from the template's on purpose
VALUES = {"protein": ["MKTAY", "MKTAYIAKQRQISFVKSHF"], "smiles": ["CCO", "c1ccccc1C(=O)O"]}


def test_parses_fields_tags_and_domains():
    template = Template.parse(BINDING)
    assert template.source == BINDING
    assert template.fields == ("protein", "smiles")
    assert template.tag_names == ("Protein", "SMILES", "BA")
    assert template.function_tag == "BA"
    assert template.domain_tags == {"protein": "Protein", "smiles": "SMILES"}


def test_a_field_without_a_tag_before_it_is_not_a_domain():
    template = Template.parse("Input: {name} is <SMILES> {smiles}. Output: <QED>")
    assert template.fields == ("name", "smiles")
    assert template.domain_tags == {"smiles": "SMILES"}
    assert template.tag_names == ("SMILES", "QED")


@pytest.mark.parametrize("source, message", [
    ("Input: <SMILES> {smiles}. Output: The QED is", "must end with its function tag"),
    ("Input: <SMILES> {smiles}. Output: <QED>.", "must end with its function tag"),
    ("Output: <QED> {smiles}", "must end with its function tag"),
    ("", "must end with its function tag"),
    ("<SMILES> {smiles} and <SMILES> {smiles} <QED>", r"Fields \['smiles'\] appear more than once"),
    ("Input: <QED> {smiles}. Output: <QED>", "also used as a domain tag"),
])
def test_invalid_templates_are_refused(source, message):
    with pytest.raises(ValueError, match=message):
        Template.parse(source)


def _literal(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def _expected(tokenizer, protein: str, smiles: str) -> tuple[list[int], list[int], list[int]]:
    """The binding prompt built by hand from its pieces: (token ids, tag slots, segments)."""
    pad = tokenizer.pad_token_id

    def text(piece: str, segment: int = 0):
        ids = _literal(tokenizer, piece)
        return ids, [-1] * len(ids), [segment] * len(ids)

    def tag(name: str, segment: int = 0):
        first = TAG_ORDER.index(name) * P
        return [pad] * P, list(range(first, first + P)), [segment] * P

    pieces = [
        text("Input: The protein sequence is"), tag("Protein", 1), text(" " + protein, 1),
        text(". The SMILES of the drug is"), tag("SMILES", 2), text(" " + smiles, 2),
        text(". Output: The binding affinity is"), tag("BA"),
    ]
    return tuple([value for piece in pieces for value in piece[k]] for k in range(3))


def _encode(tokenizer, values=VALUES):
    return TemplateEncoder(Template.parse(BINDING), tokenizer, TAG_ORDER, P).encode(values)


def test_tags_are_spliced_at_exact_positions(tiny_backbone):
    tokenizer = tiny_backbone.tokenizer
    encoded = _encode(tokenizer)
    assert len(encoded) == 2
    for row, (protein, smiles) in enumerate(zip(VALUES["protein"], VALUES["smiles"])):
        ids, slots, segments = _expected(tokenizer, protein, smiles)
        np.testing.assert_array_equal(encoded.input_ids[row], ids)
        np.testing.assert_array_equal(encoded.tag_slots[row], slots)
        np.testing.assert_array_equal(encoded.segments[row], segments)
        assert encoded.readout[row] == len(ids) - 1
    np.testing.assert_array_equal(encoded.lengths, [len(ids) for ids in encoded.input_ids])


def test_start_tokens_come_first_and_shift_everything(tiny_llama):
    """A tokenizer that adds a start token (as Llama's do) puts it before the prompt, outside any tag."""
    backend = Tokenizer.from_str(tiny_llama.tokenizer.backend_tokenizer.to_str())
    start = tiny_llama.tokenizer.eos_token
    backend.post_processor = processors.TemplateProcessing(
        single=f"{start} $A", special_tokens=[(start, tiny_llama.tokenizer.eos_token_id)]
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=start, eos_token=start, pad_token="<|pad|>")
    encoded = _encode(tokenizer)
    ids, slots, segments = _expected(tokenizer, VALUES["protein"][0], VALUES["smiles"][0])
    np.testing.assert_array_equal(encoded.input_ids[0], [tokenizer.bos_token_id, *ids])
    np.testing.assert_array_equal(encoded.tag_slots[0], [-1, *slots])
    np.testing.assert_array_equal(encoded.segments[0], [0, *segments])
    assert encoded.readout[0] == len(ids)


def test_readout_is_the_last_function_tag_vector(tiny_llama):
    encoded = _encode(tiny_llama.tokenizer)
    function_rows = TAG_ORDER.index("BA") * P + np.arange(P)
    for slots, readout in zip(encoded.tag_slots, encoded.readout):
        function_positions = np.flatnonzero(np.isin(slots, function_rows))
        assert readout == function_positions[-1]
        assert slots[readout] == function_rows[-1]


def test_segments_number_domain_segments_only(tiny_llama):
    template = Template.parse("Input: {name} is <SMILES> {smiles}. Output: <QED>")
    encoder = TemplateEncoder(template, tiny_llama.tokenizer, ["SMILES", "QED"], P)
    encoded = encoder.encode({"name": ["aspirin"], "smiles": ["CC(=O)Oc1ccccc1C(=O)O"]})
    slots, segments = encoded.tag_slots[0], encoded.segments[0]
    smiles_tokens = len(_literal(tiny_llama.tokenizer, " CC(=O)Oc1ccccc1C(=O)O"))
    start = np.flatnonzero(slots == 0)[0]  # the first <SMILES> vector opens segment 1
    np.testing.assert_array_equal(np.flatnonzero(segments == 1), np.arange(start, start + P + smiles_tokens))
    assert set(np.unique(segments)) == {0, 1}


class CountingTokenizer:
    """Delegates to a tokenizer and counts every text it is asked to tokenize."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self.texts = Counter()

    def __call__(self, texts, **kwargs):
        self.texts.update([texts] if isinstance(texts, str) else texts)
        return self._tokenizer(texts, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


def test_each_distinct_value_is_tokenized_once(tiny_llama):
    tokenizer = CountingTokenizer(tiny_llama.tokenizer)
    encoder = TemplateEncoder(Template.parse(BINDING), tokenizer, TAG_ORDER, P)
    tokenizer.texts.clear()
    values = {"protein": ["MKTAY", "MKTAY", "WYCHP", "MKTAY"], "smiles": ["CCO", "CCN", "CCO", "CCO"]}
    encoded = encoder.encode(values)
    assert {text.strip() for text in tokenizer.texts} == {"MKTAY", "WYCHP", "CCO", "CCN"}
    assert set(tokenizer.texts.values()) == {1}
    np.testing.assert_array_equal(encoded.input_ids[0], encoded.input_ids[3])
    expected = _encode(tiny_llama.tokenizer, {field: column[:2] for field, column in values.items()})
    np.testing.assert_array_equal(encoded.input_ids[1], expected.input_ids[1])


def test_encoder_needs_every_tag_and_field(tiny_llama):
    with pytest.raises(ValueError, match=r"No tags for \['Protein'\]"):
        TemplateEncoder(Template.parse(BINDING), tiny_llama.tokenizer, ["BA", "SMILES"], P)
    encoder = TemplateEncoder(Template.parse(BINDING), tiny_llama.tokenizer, TAG_ORDER, P)
    with pytest.raises(ValueError, match=r"No values given for template fields \['protein'\]"):
        encoder.encode({"smiles": ["CCO"]})


def test_fields_need_one_value_per_prompt(tiny_llama):
    encoder = TemplateEncoder(Template.parse(BINDING), tiny_llama.tokenizer, TAG_ORDER, P)
    with pytest.raises(ValueError, match="one value per prompt"):
        encoder.encode({"protein": ["MKTAY", "WYCHP"], "smiles": ["CCO", "CCN", "CCC"]})
    assert len(encoder.encode({"notes": ["unused"], **VALUES})) == 2, "values of other columns do not count"


def test_subset_keeps_rows_in_the_given_order(tiny_llama):
    encoded = _encode(tiny_llama.tokenizer)
    subset = encoded.subset([1, 0])
    np.testing.assert_array_equal(subset.readout, encoded.readout[[1, 0]])
    for k, row in enumerate([1, 0]):
        np.testing.assert_array_equal(subset.input_ids[k], encoded.input_ids[row])
        np.testing.assert_array_equal(subset.tag_slots[k], encoded.tag_slots[row])
        np.testing.assert_array_equal(subset.segments[k], encoded.segments[row])
