"""Zero-shot translation between molecular languages (benchmark task ``gen-translate``).

Tag-LLM's translation experiment in chemistry: the domain tags ``<SMILES>``, ``<SELFIES>``, ``<InChI>``
and ``<Formula>`` are learned in stage 1 by next-token prediction on unpaired molecules in each
language; one ``<Translate>`` tag is then trained on some directions only and evaluated on those and
on directions it never saw. Every representation comes from the shared SMILES corpus through RDKit
and ``selfies``, with disjoint molecules for stage 1, for the translation pairs and for the test.

Methods, all on the same frozen backbone and test molecules:

- ``tags``: :class:`~chemtag.MoleculeTranslator` with the stage-1 language tags (frozen) and ``<Translate>``;
- ``prompt tuning``: the same translator with the languages written as words, so that ``<Translate>``
  (the soft prompt) is the only trained vector, on the same pairs and steps;
- ``few-shot``: no training; ``--shots`` pairs of the same direction, one per line
  (``Input: SMILES ... Output: SELFIES ...``), before the test input, greedy decoding to the end of the line.

Metrics per direction: exact match after canonicalisation (same molecule; same Hill formula) and
validity (the output parses in the target language). Prints a Markdown table and writes JSON.

    .venv/bin/python benchmarks/translate.py --bf16 --library tags/ --out translate.json > translate.log 2>&1
"""

from __future__ import annotations

import argparse
import gzip
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rdkit import Chem, RDLogger
from transformers import GenerationConfig

from chemtag import MoleculeTranslator
from chemtag.backbones import DEFAULT_BACKBONE, Backbone, load_backbone
from chemtag.generation import left_padded, until_end
from chemtag.protocol import pretrain_domain_tag, text_loss
from chemtag.representations import LANGUAGES, canonical, convert, same
from chemtag.tags import TagLibrary
from chemtag.templates import EncodedPrompts

CORPUS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "smiles_moses_100k.txt.gz"
TRAINED = [("SMILES", "SELFIES"), ("InChI", "SMILES"), ("SMILES", "Formula")]
UNSEEN = [("InChI", "SELFIES"), ("SELFIES", "Formula"), ("SELFIES", "SMILES")]


def molecules(corpus: Path, count: int, max_atoms: int, seed: int) -> list[dict[str, str]]:
    """``count`` molecules of at most ``max_atoms`` heavy atoms, in a seeded random order, each written in
    every language. Molecules whose InChI does not read back to the same SMILES are skipped, so that
    every language names the same molecule."""
    with gzip.open(corpus, "rt") as handle:
        lines = [line.strip() for line in handle if line.strip()]
    RDLogger.DisableLog("rdApp.*")
    records = []
    for index in np.random.default_rng(seed).permutation(len(lines)):
        molecule = Chem.MolFromSmiles(lines[index])
        if molecule is None or molecule.GetNumHeavyAtoms() > max_atoms:
            continue
        record = {language: convert(lines[index], "SMILES", language) for language in LANGUAGES}
        if None not in record.values() and convert(record["InChI"], "InChI", "SMILES") == record["SMILES"]:
            records.append(record)
            if len(records) == count:
                return records
    raise ValueError(f"The corpus has only {len(records)} usable molecules of at most {max_atoms} heavy atoms.")


def stage_one(backbone: Backbone, texts: list[dict[str, str]], held_out: list[dict[str, str]], folder: Path,
              args) -> dict:
    """Train each language's domain tag not yet in the library ``folder`` and add it there; held-out loss
    (nats per token on the test molecules) without and with every tag."""
    exists = (folder / "manifest.json").is_file()
    library = TagLibrary.load(folder, backbone) if exists else TagLibrary(backbone.fingerprint)
    report = {}
    for language in LANGUAGES:
        if language not in library:
            tag, history = pretrain_domain_tag(
                backbone, [r[language] for r in texts], language, tag_length=args.tag_length,
                steps=args.stage1_steps, batch_size=args.batch_size, lr=args.stage1_lr, max_tokens=args.max_tokens,
                bf16=args.bf16, random_state=args.seed, verbose=0)
            tag.provenance["train_loss"] = [h["train_loss"] for h in history]
            library.add(tag)
            library.save(folder)
        tag = library[language]
        heldout = [r[language] for r in held_out]
        report[language] = {
            "steps": tag.provenance["steps"], "seconds": tag.provenance["seconds"],
            "first_train_loss": tag.provenance["train_loss"][0], "last_train_loss": tag.provenance["train_loss"][-1],
            "held_out_loss_no_tag": text_loss(backbone, heldout, None, args.batch_size, args.max_tokens, args.bf16),
            "held_out_loss_tag": text_loss(backbone, heldout, tag, args.batch_size, args.max_tokens, args.bf16),
        }
        print(f"stage 1 <{language}>: {report[language]}", flush=True)
    return report


def pairs(records: list[dict[str, str]], directions: list[tuple[str, str]]) -> tuple[pd.DataFrame, list[str]]:
    """Translation rows (text, source, target) for every record in every direction, and their targets."""
    rows = [(r[s], s, t, r[t]) for s, t in directions for r in records]
    frame = pd.DataFrame([row[:3] for row in rows], columns=["text", "source", "target"])
    return frame, [row[3] for row in rows]


def line_ends(backbone: Backbone) -> list[int]:
    """Ids of the tokens that end a line (hold a newline), and the end token."""
    tokenizer = backbone.tokenizer
    return [tokenizer.eos_token_id, *(i for i in range(len(tokenizer)) if "\n" in tokenizer.decode([i]))]


def few_shot(backbone: Backbone, examples: list[dict[str, str]], texts: list[str], source: str, target: str,
             max_new_tokens: int, stop_ids: list[int], bf16: bool) -> list[str]:
    """Greedy continuations of ``examples`` written as lines, then each text, up to a token of ``stop_ids``."""
    tokenizer = backbone.tokenizer
    shots = "".join(f"Input: {source} {e[source]} Output: {target} {e[target]}\n" for e in examples)
    ids = tokenizer([shots + f"Input: {source} {text} Output: {target}" for text in texts]).input_ids
    prompts = EncodedPrompts([np.asarray(i) for i in ids], [np.full(len(i), -1) for i in ids],
                             [np.zeros(len(i), dtype=np.int64) for i in ids], np.zeros(len(ids), dtype=np.int64))
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, eos_token_id=stop_ids,
                              pad_token_id=tokenizer.pad_token_id)
    batch = left_padded(prompts, range(len(texts)), tokenizer.pad_token_id, backbone.device)
    with torch.no_grad(), torch.autocast(backbone.device.type, dtype=torch.bfloat16, enabled=bf16):
        written = backbone.model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask.long(),
                                          generation_config=config)
    return [tokenizer.decode(until_end(ids, tokenizer.eos_token_id)).split("\n")[0].strip()
            for ids in written[:, batch.input_ids.shape[1]:].tolist()]


def scores(predicted: list[str | None], expected: list[str], language: str) -> dict:
    return {
        "exact_match": float(np.mean([same(p, e, language) for p, e in zip(predicted, expected)])),
        "valid": float(np.mean([canonical(p, language) is not None for p in predicted])),
        "examples": [{"predicted": p, "expected": e} for p, e in list(zip(predicted, expected))[:3]],
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE)
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--max-atoms", type=int, default=17, help="largest molecule, in heavy atoms")
    parser.add_argument("--stage1-texts", type=int, default=200, help="molecules per language for stage 1")
    parser.add_argument("--stage1-steps", type=int, default=20)
    parser.add_argument("--stage1-lr", type=float, default=1e-2)
    parser.add_argument("--pairs", type=int, default=24, help="training molecules per trained direction")
    parser.add_argument("--epochs", type=int, default=3, help="stage-2 epochs over the training pairs")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--test", type=int, default=10, help="test molecules per direction")
    parser.add_argument("--shots", type=int, default=3)
    parser.add_argument("--tag-length", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64, help="longest stage-1 text, in tokens")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--library", type=Path, help="stage-1 tag library: tags it holds are reused, new ones added")
    parser.add_argument("--out", type=Path, help="JSON results, rewritten after each stage and direction")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    torch.manual_seed(args.seed)
    backbone = load_backbone(args.backbone)
    records = molecules(args.corpus, args.stage1_texts + args.pairs + args.test, args.max_atoms, args.seed)
    stage1, train, test = (records[:args.stage1_texts], records[args.stage1_texts:-args.test], records[-args.test:])
    results = {"args": {k: str(v) for k, v in vars(args).items()}, "trained": TRAINED, "unseen": UNSEEN}

    def save() -> None:
        results["seconds"] = round(time.perf_counter() - started, 1)
        if args.out:
            args.out.write_text(json.dumps(results, indent=2))

    with tempfile.TemporaryDirectory() as scratch:
        library = args.library or Path(scratch)
        results["stage1"] = stage_one(backbone, stage1, test, library, args)
        save()
        X, y = pairs(train, TRAINED)
        common = dict(backbone=args.backbone, tag_length=args.tag_length, max_epochs=args.epochs,
                      batch_size=args.batch_size, lr=args.lr, validation_fraction=0, bf16=args.bf16,
                      random_state=args.seed, verbose=0)
        methods = {}
        for name, options in (("tags", dict(domain_tags=str(library), languages=list(LANGUAGES))),
                              ("prompt tuning", dict(language_tags=False))):
            fit_started = time.perf_counter()
            methods[name] = MoleculeTranslator(**common, **options).fit(X, y)
            results.setdefault("stage2", {})[name] = {
                "rows": len(X), "train_loss": [h["train_loss"] for h in methods[name].history_],
                "seconds": round(time.perf_counter() - fit_started, 1)}
            print(f"stage 2 {name}: {results['stage2'][name]}", flush=True)
            save()
    tokenizer, stop_ids = backbone.tokenizer, line_ends(backbone)
    results["table"] = []
    for source, target in TRAINED + UNSEEN:
        X_test, y_test = pairs(test, [(source, target)])
        limit = max(len(tokenizer(" " + text).input_ids) for text in y_test) + 8
        row = {"direction": f"{source} -> {target}", "trained": (source, target) in TRAINED}
        for name, model in methods.items():
            model.set_params(max_new_tokens=limit, batch_size=len(X_test))  # decode all test rows at once
            row[name] = scores(model.predict(X_test), y_test, target)
        row["few-shot"] = scores(few_shot(backbone, train[:args.shots], X_test["text"].tolist(), source, target,
                                          limit, stop_ids, args.bf16), y_test, target)
        results["table"].append(row)
        print(row["direction"], {m: (row[m]["exact_match"], row[m]["valid"]) for m in (*methods, "few-shot")},
              flush=True)
        save()
    print(markdown(results["table"]))
    return results


def markdown(table: list[dict]) -> str:
    methods = [key for key in table[0] if key not in ("direction", "trained")]
    lines = ["| direction | seen in training | " + " | ".join(f"{m}: exact / valid" for m in methods) + " |",
             "|---|---|" + "---|" * len(methods)]
    for row in table:
        cells = " | ".join(f"{row[m]['exact_match']:.2f} / {row[m]['valid']:.2f}" for m in methods)
        lines.append(f"| {row['direction']} | {'yes' if row['trained'] else 'no (zero-shot)'} | {cells} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
