"""Generation with tags: target-only loss, decoding, the generator and translator estimators, and
the molecular languages they translate between."""

import re

import joblib
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from torch.nn import functional

from chemtag import MoleculeTranslator, TagLLMGenerator, backbones, tiny
from chemtag.backbones import Backbone
from chemtag.generation import TaggedGenerator, append_targets, decode, target_ids, target_loss
from chemtag.model import Batch
from chemtag.prefix_cache import PrefixCache
from chemtag.representations import canonical, canonical_formula, convert, same
from chemtag.tags import Tag
from chemtag.templates import Template, TemplateEncoder
from chemtag.validation import InvalidInputError

TEMPLATE = "Input: <SMILES> {x} Output: <Name>"
PROMPTS = ["CCO", "c1ccccc1CC(=O)O", "CCN", "CC(C)(C)CCCCBr"]  # of different lengths
NAMES = ["ethanol", "ethylamine", "chloro propane", "benzene"]
FIT = dict(domains={"x": "SMILES"}, domain_tags=None, tag_length=16, lr=3e-2, max_epochs=400, patience=400,
           batch_size=4, validation_fraction=0, max_new_tokens=40, verbose=0)
QUICK = dict(backbone="tiny-llama", domain_tags=None, tag_length=4, max_epochs=1, validation_fraction=0, verbose=0,
             max_new_tokens=5)


def sharp_backbone(name: str) -> Backbone:
    """A tiny backbone with its weight matrices scaled 10x. At the usual 0.02 initialisation the random
    model's next-token distribution is nearly uniform whatever its input, so no tag could steer it;
    scaled, its output depends on its input as a trained model's does."""
    model, tokenizer = tiny.build(name)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim == 2:
                parameter.mul_(10)
    backbones._freeze(model)
    backbones._ensure_pad_token(tokenizer)
    return Backbone(f"sharp-{name}", None, model, tokenizer)


@pytest.fixture(scope="module")
def sharp():
    """The sharp backbones, loadable by name (``"sharp-tiny-llama"``) while this module runs."""
    loaded = {}
    for name in tiny.TINY_BACKBONES:
        backbone = sharp_backbone(name)
        loaded[(backbone.name, None, torch.float32, torch.device("cpu"), False)] = backbone
    backbones._LOADED.update(loaded)
    yield {key[0]: backbone for key, backbone in loaded.items()}
    for key in loaded:
        backbones._LOADED.pop(key, None)


def tagged_generator(backbone: Backbone, seed: int = 0) -> TaggedGenerator:
    """A generator model with random (not identical-row) tags, so that outputs differ by prompt."""
    generator = torch.Generator().manual_seed(seed)
    tags = [Tag(name, kind, torch.randn(3, backbone.hidden_size, generator=generator))
            for name, kind in (("SMILES", "domain"), ("Name", "function"))]
    return TaggedGenerator(backbone, tags, ["Name"])


def encode(model: TaggedGenerator, texts):
    return TemplateEncoder(Template.parse(TEMPLATE), model.backbone.tokenizer, model.tag_names, 3).encode({"x": texts})


# ----------------------------------------------------------------- training loss
def test_only_target_tokens_and_the_end_token_are_scored(tiny_llama):
    model = tagged_generator(tiny_llama)
    prompts = encode(model, PROMPTS[:2])
    joined = append_targets(prompts, tiny_llama.tokenizer, NAMES[:2])
    batch = Batch.collate(joined, [0, 1], tiny_llama.tokenizer.pad_token_id, "cpu")
    outputs = model(batch)
    embeds = model.input_embeddings(batch)
    logits = tiny_llama.model(inputs_embeds=embeds, attention_mask=batch.attention_mask.long()).logits
    for row in range(2):
        ids = joined.input_ids[row]
        start = len(prompts.input_ids[row])  # first target token
        assert ids[-1] == tiny_llama.tokenizer.eos_token_id
        expected = [functional.cross_entropy(logits[row, j - 1], torch.tensor(ids[j]), reduction="sum")
                    for j in range(start, len(ids))]
        assert outputs[row, 1].item() == len(expected) == len(target_ids(tiny_llama.tokenizer, [NAMES[row]])[0])
        torch.testing.assert_close(outputs[row, 0], torch.stack(expected).sum())
    torch.testing.assert_close(target_loss(outputs), outputs[:, 0].sum() / outputs[:, 1].sum())


def test_the_loss_through_the_prefix_cache_equals_the_full_forward(tiny_backbone):
    model = tagged_generator(tiny_backbone)
    joined = append_targets(encode(model, PROMPTS), tiny_backbone.tokenizer, NAMES)
    cache = PrefixCache(model, joined).compute(batch_size=2)
    full = model(Batch.collate(joined, [1, 3], tiny_backbone.tokenizer.pad_token_id, "cpu"))
    torch.testing.assert_close(model(cache.batch([1, 3])), full)


# ----------------------------------------------------------------- decoding
def naive_greedy(model: TaggedGenerator, prompts, row: int, steps: int) -> list[int]:
    """Greedy decoding of one prompt by full forward passes, no padding and no KV cache."""
    batch = Batch.collate(prompts, [row], model.backbone.tokenizer.pad_token_id, "cpu")
    embeds, written = model.input_embeddings(batch), []
    for _ in range(steps):
        token = model.backbone.model(inputs_embeds=embeds).logits[0, -1].argmax().item()
        if token == model.backbone.tokenizer.eos_token_id:
            break
        written.append(token)
        embeds = torch.cat([embeds, model.backbone.embed(torch.tensor([[token]]))], dim=1)
    return written


@pytest.mark.parametrize("name", tiny.TINY_BACKBONES)
def test_batched_left_padded_decoding_matches_one_prompt_at_a_time(sharp, name):
    model = tagged_generator(sharp[f"sharp-{name}"])
    prompts = encode(model, PROMPTS)
    for beams in (1, 3):
        batched = model.generate(prompts, max_new_tokens=6, num_beams=beams, batch_size=len(PROMPTS))
        assert batched == model.generate(prompts, max_new_tokens=6, num_beams=beams, batch_size=1)
    greedy = model.generate(prompts, max_new_tokens=6, batch_size=len(PROMPTS))
    assert greedy == [naive_greedy(model, prompts, row, 6) for row in range(len(PROMPTS))]
    assert len({tuple(ids) for ids in greedy}) > 1  # outputs depend on the prompt


def test_decoding_respects_the_length_limit(tiny_llama):
    model = tagged_generator(tiny_llama)
    written = model.generate(encode(model, PROMPTS), max_new_tokens=3, num_beams=2)
    assert written and all(len(ids) <= 3 for ids in written)


@pytest.fixture(scope="module")
def fitted(sharp):
    """A generator fitted until it reproduces its four training pairs (on one thread, as the conftest
    runs tests: module fixtures are set up before its per-test fixture)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return TagLLMGenerator(backbone="sharp-tiny-llama", **FIT).fit(PROMPTS, NAMES)
    finally:
        torch.set_num_threads(threads)


def test_the_generator_overfits_a_handful_of_pairs_and_stops_at_the_end_token(fitted):
    assert fitted.predict(PROMPTS) == NAMES
    assert fitted.score(PROMPTS, NAMES) == 1.0
    model = fitted._model_from_fitted(fitted._backbone())
    prompts = fitted._encode(model, fitted._read_rows(PROMPTS, fitting=False))
    written = model.generate(prompts, max_new_tokens=FIT["max_new_tokens"])
    expected = [ids[:-1] for ids in target_ids(model.backbone.tokenizer, NAMES)]
    assert written == expected  # the end token stopped each text well before the limit
    assert decode(model.backbone.tokenizer, written) == NAMES
    assert fitted.history_[-1]["train_loss"] < fitted.history_[0]["train_loss"]


def test_score_is_the_share_of_exact_matches(fitted):
    assert fitted.score(PROMPTS, NAMES[:3] + ["toluene"]) == 0.75
    assert fitted.score(PROMPTS, NAMES[:3] + ["toluene"], sample_weight=[1, 1, 1, 5]) == 3 / 8


def test_the_default_template_writes_the_output_domain_tag_before_the_function_tag():
    model = TagLLMGenerator(output_domain="SELFIES", **QUICK).fit(pd.DataFrame({"Drug": ["CCO"]}), ["[C][C][O]"])
    assert model.template_ == "Input: Drug: {Drug}. Output: <SELFIES> <Output>"
    assert model.output_domain == "SELFIES" and set(model.tags_) == {"SELFIES", "Output"}


def test_targets_are_validated_in_the_output_domain():
    with pytest.raises(ValueError, match=r"invalid target texts: rows 1 \('C\(C' as SMILES\)"):
        TagLLMGenerator(output_domain="SMILES", **QUICK).fit(pd.DataFrame({"x": ["a", "b"]}), ["CCO", "C(C"])
    with pytest.raises(ValueError, match="isolate_segments=False"):
        TagLLMGenerator(isolate_segments=True, **QUICK).fit(pd.DataFrame({"x": ["a"]}), ["b"])
    with pytest.raises(ValueError, match="^TagLLMGenerator needs head_training='joint': its head is the backbone's own"):
        TagLLMGenerator(head_training="refit", **QUICK).fit(pd.DataFrame({"x": ["a"]}), ["b"])
    with pytest.raises(ValueError, match=r"^TagLLMGenerator needs pool_fields=False: its head is the backbone's own "
                                         r"LM head, which reads each token's state only\.$"):
        TagLLMGenerator(pool_fields=True, **QUICK).fit(pd.DataFrame({"x": ["a"]}), ["b"])
    with pytest.raises(ValueError, match="num_beams must be a positive integer"):
        TagLLMGenerator(num_beams=0, **QUICK).fit(pd.DataFrame({"x": ["a"]}), ["b"])


# ----------------------------------------------------------------- persistence and the sklearn protocol
def test_folder_and_pickle_round_trips_generate_the_same_text(fitted, tmp_path):
    loaded = TagLLMGenerator.load(fitted.save(tmp_path / "model"))
    assert loaded.get_params() == fitted.get_params()
    assert loaded.predict(PROMPTS) == NAMES
    joblib.dump(fitted, tmp_path / "model.joblib")
    assert (tmp_path / "model.joblib").stat().st_size < 100_000  # tags only, no backbone weights
    unpickled = joblib.load(tmp_path / "model.joblib")
    assert not hasattr(unpickled, "_model") and unpickled.predict(PROMPTS) == NAMES


def test_clone_keeps_the_parameters_and_drops_the_fit():
    model = MoleculeTranslator(source="InChI", target="SMILES", languages=["InChI", "SMILES", "SELFIES"], **QUICK)
    model.fit(["InChI=1S/C2H6O/c1-2-3/h3H,2H2,1H3"], ["CCO"])
    copy = clone(model)
    assert copy.get_params() == model.get_params() and not hasattr(copy, "tags_")
    assert MoleculeTranslator().get_params()["function_tag"] == "Translate"


# ----------------------------------------------------------------- the translator
def test_the_translator_writes_tag_llm_s_template_for_each_row_s_direction():
    X = pd.DataFrame({"text": ["CCO", "InChI=1S/CH4/h1H4"], "source": ["SMILES", "InChI"],
                      "target": ["SELFIES", "SMILES"]})
    model = MoleculeTranslator(**QUICK).fit(X, ["[C][C][O]", "C"])
    assert model.template_ == "Input: <SMILES> {text} Output: <SELFIES> <Translate>"
    assert list(model.tags_) == ["SMILES", "SELFIES", "InChI", "Translate"]
    rows = model._read_rows(X, fitting=False)
    assert rows.templates[1] == "Input: <InChI> {text} Output: <SMILES> <Translate>"
    assert rows.outputs == ["SELFIES", "SMILES"]
    assert len(model.predict(X.assign(target=["InChI", "SELFIES"]))) == 2  # unseen directions between known tags


def test_without_language_tags_the_translator_is_prompt_tuning():
    model = MoleculeTranslator(language_tags=False, **QUICK).fit(["CCO"], ["[C][C][O]"])
    assert model.template_ == "Input: SMILES {text} Output: SELFIES <Translate>" and list(model.tags_) == ["Translate"]
    assert len(model.predict(pd.DataFrame({"text": ["CCO"], "target": ["InChI"]}))) == 1
    with pytest.raises(ValueError, match="with language_tags=False there are none"):
        MoleculeTranslator(language_tags=False, languages=["SMILES", "SELFIES"], **QUICK).fit(["CCO"], ["[C][C][O]"])


def test_the_translator_refuses_languages_it_has_no_tag_for_and_invalid_molecules():
    model = MoleculeTranslator(**QUICK).fit(["CCO"], ["[C][C][O]"])
    with pytest.raises(ValueError, match=r"holds tags for \['SMILES', 'SELFIES'\] only, not \['Formula'\]"):
        model.predict(pd.DataFrame({"text": ["CCO"], "target": ["Formula"]}))
    with pytest.raises(InvalidInputError, match="Invalid molecules in column 'text' at 1 of 2 rows: 1"):
        model.predict(["CCO", "C(C"])
    assert model.set_params(on_invalid="nan").predict(["CCO", "C(C"])[1] is None
    message = "All 2 rows have invalid input: nothing is left to train on (on_invalid='nan' drops them)."
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        MoleculeTranslator(on_invalid="nan", **QUICK).fit(["C(C", "X"], ["[C]", "[C]"])
    with pytest.raises(ValueError, match="a formula does not determine a molecule"):
        MoleculeTranslator(source="Formula", target="SMILES", **QUICK).fit(["C2H6O"], ["CCO"])
    with pytest.raises(ValueError, match="leave domains, template and output_domain unset"):
        MoleculeTranslator(template="Input: {text} <Translate>", **QUICK).fit(["CCO"], ["[C][C][O]"])


def test_translator_targets_and_scores_are_compared_in_canonical_form():
    model = MoleculeTranslator(source="SMILES", target="Formula", **QUICK)
    with pytest.raises(ValueError, match="invalid target texts"):
        model.fit(["CCO"], ["C2H6Xx"])
    assert model._read_targets(["OC2H6"], ["Formula"]) == ["C2H6O"]


# ----------------------------------------------------------------- molecular languages
@pytest.mark.parametrize("smiles", ["CCO", "c1ccccc1O", "N[C@@H](C)C(=O)O", "CC(=O)[O-].[Na+]"])
def test_every_language_reads_back_to_the_same_molecule(smiles):
    reference = canonical(smiles, "SMILES")
    for language in ("SELFIES", "InChI"):
        written = convert(smiles, "SMILES", language)
        assert written == canonical(written, language)
        assert convert(written, language, "SMILES") == reference


def test_formulas_are_compared_in_hill_order():
    assert convert("CCO", "SMILES", "Formula") == canonical_formula("OC2H6") == "C2H6O"
    assert canonical_formula("NaCl") == "ClNa" and canonical_formula("C2H3O2-") == "C2H3O2-"
    assert canonical_formula("C2H6Xx") is None and canonical_formula("c2h6o") is None


def test_same_compares_canonical_forms_and_never_matches_invalid_text():
    assert same("OCC", "CCO", "SMILES") and same("[O][C][C]", "[C][C][O]", "SELFIES")
    assert not same("C(C", "C(C", "SMILES") and not same("CCN", "CCO", "SMILES")
