"""Zero-shot translation between molecular languages (benchmark task ``gen-translate``).

Tag-LLM's translation experiment in chemistry: the domain tags ``<SMILES>``, ``<SELFIES>``, ``<InChI>``
and ``<Formula>`` are learned in stage 1 by next-token prediction on unpaired molecules in each
language; one ``<Translate>`` tag is then trained on some directions only and evaluated on those and
on directions it never saw. Every representation comes from the shared SMILES corpus through RDKit
and ``selfies``, with disjoint molecules for stage 1, for the translation pairs and for the test.

Methods (``--methods``), all on the same backbone and test molecules:

- ``tags``: :class:`~chemtag.MoleculeTranslator` with the stage-1 language tags (frozen) and ``<Translate>``;
- ``prompt-tuning``: the same translator with the languages written as words, so that ``<Translate>``
  (the soft prompt) is the only trained vector, on the same pairs and steps;
- ``lora``: LoRA adapters on a copy of the causal LM (:class:`~benchmarks.lora_translation.LoraTranslator`),
  the languages written as words and no tag, on the same pairs and steps;
- ``few-shot``: no training; ``--shots`` pairs of the same direction, one per line
  (``Input: SMILES ... Output: SELFIES ...``), before the test input, greedy decoding to the end of the line.

Stage 1 runs only with ``tags``. Metrics per direction: exact match after canonicalisation (same
molecule; same Hill formula) and validity (the output parses in the target language). Prints a
Markdown report and writes JSON (``--out``) and the report (``--markdown``). ``python -m benchmarks run
--task gen-translate --budget quick|full`` runs it with the arguments of :data:`BUDGETS`.

    .venv/bin/python -m benchmarks.translate --bf16 --library tags/ --out translate.json > translate.log 2>&1
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
from rdkit import Chem

from chemtag import MoleculeTranslator
from chemtag.backbones import DEFAULT_BACKBONE, Backbone, load_backbone
from chemtag.generation import generate_after, untagged_prompts
from chemtag.protocol import pretrain_domain_tag, text_loss
from chemtag.representations import LANGUAGES, canonical, convert, same
from chemtag.tags import TagLibrary
from chemtag.validation import quiet_rdkit

from benchmarks.lora_translation import LoraTranslator

CORPUS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "smiles_moses_100k.txt.gz"
TRAINED = [("SMILES", "SELFIES"), ("InChI", "SMILES"), ("SMILES", "Formula")]
UNSEEN = [("InChI", "SELFIES"), ("SELFIES", "Formula"), ("SELFIES", "SMILES")]
METHODS = ("tags", "prompt-tuning", "lora", "few-shot")
# Arguments of each budget of ``python -m benchmarks run --task gen-translate``. Wall time on the default
# backbone (SmolLM2-135M), bf16 for full, one torch thread on a 2-core CPU shared with other jobs (load ~3),
# from per-step costs measured there: stage-1 step of 8 texts 1.7 s, stage-2 step of 8 pairs 1.6 s (tags,
# prompt tuning) and 2.5 s (LoRA), a decoding step of 50 rows 0.3 s.
BUDGETS: dict[str, list[str]] = {
    # The defaults: 4 x 20 stage-1 steps of 4 texts, 72 pairs x 3 epochs = 54 steps per method, 10 test
    # molecules per direction: 11 minutes measured (640 s; seconds on the tiny backbones).
    "quick": [],
    # 4 x 200 stage-1 steps of 8 texts (2,000 molecules, ~23 min), 150 pairs per trained direction x 3 epochs
    # = 169 steps per method (~16 min for three methods), 50 test molecules per direction (~9 min of
    # decoding, few-shot's long prompts included): about 50 minutes estimated; 76 minutes (4,567 s) measured
    # beside other benchmark jobs.
    "full": ["--stage1-texts", "2000", "--stage1-steps", "200", "--pairs", "150", "--epochs", "3", "--test", "50",
             "--batch-size", "8", "--bf16"],
}


def molecules(corpus: Path, count: int, max_atoms: int, seed: int) -> list[dict[str, str]]:
    """``count`` molecules of at most ``max_atoms`` heavy atoms, in a seeded random order, each written in
    every language. Molecules whose InChI does not read back to the same SMILES are skipped, so that
    every language names the same molecule."""
    with gzip.open(corpus, "rt") as handle:
        lines = [line.strip() for line in handle if line.strip()]
    records = []
    for index in np.random.default_rng(seed).permutation(len(lines)):
        with quiet_rdkit():
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
    embed = backbone.model.get_input_embeddings()
    written = generate_after(backbone.model, tokenizer, untagged_prompts(ids), lambda batch: embed(batch.input_ids),
                             max_new_tokens, bf16=bf16, stop_ids=stop_ids)
    return [tokenizer.decode(ids).split("\n")[0].strip() for ids in written]


def scores(predicted: list[str | None], expected: list[str], language: str) -> dict:
    return {
        "exact_match": float(np.mean([same(p, e, language) for p, e in zip(predicted, expected)])),
        "valid": float(np.mean([canonical(p, language) is not None for p in predicted])),
        "examples": [{"predicted": p, "expected": e} for p, e in list(zip(predicted, expected))[:3]],
    }


def translators(args: argparse.Namespace, library: Path) -> dict[str, MoleculeTranslator | LoraTranslator]:
    """The trained methods of ``args.methods``, unfitted: the same pairs, epochs and batch size for each."""
    common = dict(backbone=args.backbone, max_epochs=args.epochs, batch_size=args.batch_size, bf16=args.bf16,
                  random_state=args.seed)
    tagged = dict(common, tag_length=args.tag_length, lr=args.lr, validation_fraction=0, verbose=0)
    every = {"tags": MoleculeTranslator(**tagged, domain_tags=str(library), languages=list(LANGUAGES)),
             "prompt-tuning": MoleculeTranslator(**tagged, language_tags=False),
             "lora": LoraTranslator(**common, lora_rank=args.lora_rank, lr=args.lora_lr)}
    return {name: model for name, model in every.items() if name in args.methods}


def method_names(text: str) -> list[str]:
    """``--methods``: comma-separated names of :data:`METHODS`."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(names) - set(METHODS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    return names


def run_budget(budget: str, results_dir: Path, *, n_train: int | None = None, n_test: int | None = None,
               methods: list[str] | None = None, seed: int = 0, backbone: str | None = None,
               data_dir: Path | None = None) -> dict:
    """The experiment with ``budget``'s arguments, for ``python -m benchmarks run --task gen-translate``.

    ``n_train`` pairs per trained direction and ``n_test`` test molecules per direction replace the
    budget's where given; the corpus is read from ``data_dir``. Writes ``gen-translate-{budget}.json``
    and ``.md`` into ``results_dir``, with ``-{n_train}x{n_test}`` after the budget where a size is given.
    """
    argv = [*BUDGETS[budget], "--seed", str(seed)]
    for option, value in (("--pairs", n_train), ("--test", n_test), ("--backbone", backbone),
                          ("--methods", ",".join(methods) if methods else None),
                          ("--corpus", data_dir / CORPUS.name if data_dir else None)):
        if value is not None:
            argv += [option, str(value)]
    stem = f"gen-translate-{budget}"
    if n_train is not None or n_test is not None:
        sizes = parser().parse_args(argv)
        stem += f"-{sizes.pairs}x{sizes.test}"
    results_dir.mkdir(parents=True, exist_ok=True)
    return main([*argv, "--out", str(results_dir / f"{stem}.json"), "--markdown", str(results_dir / f"{stem}.md")])


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE)
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--methods", type=method_names, default=list(METHODS),
                        help=f"comma-separated subset of: {', '.join(METHODS)} (default: all)")
    parser.add_argument("--max-atoms", type=int, default=17, help="largest molecule, in heavy atoms")
    parser.add_argument("--stage1-texts", type=int, default=200, help="molecules per language for stage 1")
    parser.add_argument("--stage1-steps", type=int, default=20)
    parser.add_argument("--stage1-lr", type=float, default=1e-2)
    parser.add_argument("--pairs", type=int, default=24, help="training molecules per trained direction")
    parser.add_argument("--epochs", type=int, default=3, help="stage-2 epochs over the training pairs")
    parser.add_argument("--lr", type=float, default=1e-2, help="learning rate of the <Translate> tag")
    parser.add_argument("--lora-lr", type=float, default=1e-3, help="learning rate of the LoRA adapters")
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--test", type=int, default=10, help="test molecules per direction")
    parser.add_argument("--shots", type=int, default=3)
    parser.add_argument("--tag-length", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64, help="longest stage-1 text, in tokens")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--library", type=Path, help="stage-1 tag library: tags it holds are reused, new ones added")
    parser.add_argument("--out", type=Path, help="JSON results, rewritten after each stage and direction")
    parser.add_argument("--markdown", type=Path, help="Markdown report, written at the end")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
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
        if "tags" in args.methods:
            results["stage1"] = stage_one(backbone, stage1, test, library, args)
            save()
        X, y = pairs(train, TRAINED)
        methods = translators(args, library)
        for name, model in methods.items():
            fit_started = time.perf_counter()
            model.fit(X, y)
            results.setdefault("stage2", {})[name] = {
                "rows": len(X), "train_loss": [h["train_loss"] for h in model.history_],
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
        if "few-shot" in args.methods:
            row["few-shot"] = scores(few_shot(backbone, train[:args.shots], X_test["text"].tolist(), source, target,
                                              limit, stop_ids, args.bf16), y_test, target)
        results["table"].append(row)
        print(row["direction"], {m: (row[m]["exact_match"], row[m]["valid"]) for m in args.methods}, flush=True)
        save()
    report = markdown(results)
    if args.markdown:
        args.markdown.write_text(report)
    print(report)
    return results


def markdown(results: dict) -> str:
    """The report: stage 1's held-out loss per language, stage 2's training, and the table per direction."""
    lines = [f"Backbone {results['args']['backbone']}, seed {results['args']['seed']}, "
             f"{results['seconds']:.0f} s.", ""]
    if "stage1" in results:
        lines += ["Stage 1, held-out next-token loss (nats per token):", "",
                  "| language | steps | no tag | trained tag |", "|---|---|---|---|"]
        lines += [f"| {language} | {r['steps']} | {r['held_out_loss_no_tag']:.2f} | {r['held_out_loss_tag']:.2f} |"
                  for language, r in results["stage1"].items()]
        lines.append("")
    if "stage2" in results:
        lines += ["Stage 2, training loss per epoch (nats per target token):", ""]
        lines += [f"- {name} ({r['rows']} pairs, {r['seconds']:.0f} s): "
                  + ", ".join(f"{loss:.2f}" for loss in r["train_loss"]) for name, r in results["stage2"].items()]
        lines.append("")
    methods = [key for key in results["table"][0] if key not in ("direction", "trained")]
    lines += ["Exact match after canonicalisation / validity in the target language:", "",
              "| direction | seen in training | " + " | ".join(f"{m}: exact / valid" for m in methods) + " |",
              "|---|---|" + "---|" * len(methods)]
    for row in results["table"]:
        cells = " | ".join(f"{row[m]['exact_match']:.2f} / {row[m]['valid']:.2f}" for m in methods)
        lines.append(f"| {row['direction']} | {'yes' if row['trained'] else 'no (zero-shot)'} | {cells} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
