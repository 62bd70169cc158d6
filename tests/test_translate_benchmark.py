"""The translation benchmark (``benchmarks/translate.py``): its LoRA baseline and its runner task
``python -m benchmarks run --task gen-translate``."""

import json

import pandas as pd
import pytest
import torch
from torch.nn import functional

from benchmarks import __main__ as cli
from benchmarks.lora_translation import LoraTranslator
from chemtag.generation import target_ids
from chemtag.model import Batch

pytest.importorskip("peft")

X = pd.DataFrame({"text": ["CCO", "c1ccccc1", "CC(C)O", "CCN"], "source": ["SMILES"] * 4,
                  "target": ["SELFIES", "Formula", "Formula", "SMILES"]})
Y = ["[C][C][O]", "C6H6", "C3H8O", "NCC"]  # of different lengths
QUICK = dict(backbone="tiny-llama", max_epochs=1, batch_size=2)


def test_the_lora_prompt_writes_the_languages_as_words_then_the_target_and_the_end_token(tiny_llama):
    joined = LoraTranslator(**QUICK).prompts(X, Y)
    written = tiny_llama.tokenizer.decode(joined.input_ids[0])
    assert written == "Input: SMILES CCO Output: SELFIES [C][C][O]<|endoftext|>"
    assert (joined.tag_slots[0] == -1).all()


def test_the_lora_loss_scores_only_the_target_tokens_and_the_end_token(tiny_llama):
    model = LoraTranslator(**QUICK).fit(X, Y)
    prompts, joined = model.prompts(X), model.prompts(X, Y)
    batch = Batch.collate(joined, [0, 1], tiny_llama.tokenizer.pad_token_id, "cpu")
    outputs = model.losses(batch)
    logits = model.model_(input_ids=batch.input_ids, attention_mask=batch.attention_mask.long()).logits
    for row in range(2):
        ids, start = joined.input_ids[row], len(prompts.input_ids[row])  # start: the first target token
        expected = [functional.cross_entropy(logits[row, j - 1], torch.tensor(ids[j]), reduction="sum")
                    for j in range(start, len(ids))]
        assert outputs[row, 1].item() == len(expected) == len(target_ids(tiny_llama.tokenizer, [Y[row]])[0])
        torch.testing.assert_close(outputs[row, 0], torch.stack(expected).sum())


def test_lora_adapts_a_copy_and_leaves_the_shared_backbone_unchanged(tiny_llama):
    before = {name: tensor.clone() for name, tensor in tiny_llama.model.state_dict().items()}
    model = LoraTranslator(**QUICK | dict(max_epochs=3, lr=1e-2)).fit(X, Y)
    model.predict(X)
    after = tiny_llama.model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[name], before[name]) for name in before)
    assert not any("lora" in name for name, _ in tiny_llama.model.named_modules())
    trained = {name: p for name, p in model.model_.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in name for name in trained)
    assert any(p.abs().sum() > 0 for name, p in trained.items() if "lora_B" in name)  # B starts at zero


def test_lora_learns_its_training_pairs_and_stops_at_the_end_token():
    model = LoraTranslator(backbone="tiny-llama", max_epochs=100, batch_size=4, lr=3e-2, max_new_tokens=12)
    assert model.fit(X, Y).predict(X) == Y
    assert model.history_[-1]["train_loss"] < model.history_[0]["train_loss"]


def test_the_runner_lists_gen_translate_and_refuses_methods_it_does_not_have(capsys):
    assert cli.main(["list"]) == 0
    assert "task gen-translate:" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="Unknown methods \\['chemtag'\\]; choose from tags, prompt-tuning"):
        cli.main(["run", "--task", "gen-translate", "--methods", "chemtag,lora"])


def test_the_runner_runs_gen_translate_and_writes_its_results(shared_data, tmp_path):
    code = cli.main(["run", "--task", "gen-translate", "--budget", "quick", "--backbone", "tiny-llama",
                     "--n-train", "4", "--n-test", "2", "--data-dir", str(shared_data), "--results-dir", str(tmp_path)])
    assert code == 0
    results = json.loads((tmp_path / "gen-translate-quick-4x2.json").read_text())
    assert [row["direction"] for row in results["table"]] == [
        "SMILES -> SELFIES", "InChI -> SMILES", "SMILES -> Formula",
        "InChI -> SELFIES", "SELFIES -> Formula", "SELFIES -> SMILES"]
    for row in results["table"]:
        assert {"tags", "prompt-tuning", "lora", "few-shot"} <= set(row)
        assert all(0 <= row[m]["exact_match"] <= 1 and len(row[m]["examples"]) == 2 for m in ("lora", "tags"))
    assert results["stage2"]["lora"]["rows"] == 3 * 4 and len(results["stage2"]["lora"]["train_loss"]) == 3
    report = (tmp_path / "gen-translate-quick-4x2.md").read_text()
    assert "| SELFIES -> SMILES | no (zero-shot) |" in report and "lora: exact / valid" in report
