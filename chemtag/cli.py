"""``chemtag fit | predict | pretrain | demo``: the estimators for people who do not write Python."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from accelerate import Accelerator

TASKS = {
    "qed": ("QEDRegressor", "column Drug (SMILES)"),
    "protein-descriptor": ("ProteinDescriptorRegressor", "column Target (protein sequence)"),
    "binding-affinity": ("BindingAffinityRegressor", "columns Target (protein sequence) and Drug (SMILES)"),
    "drug-combination": ("DrugComboRegressor", "columns Drug1, Drug2 (SMILES) and Cell_Line_ID (text)"),
    "regression": ("TagLLMRegressor", "any columns; map them with --domain COLUMN=SMILES|Protein|Text"),
    "classification": ("TagLLMClassifier", "any columns; map them with --domain COLUMN=SMILES|Protein|Text"),
}

_EPILOG = "tasks and the input columns they read (TDC names; rename with --column FIELD=YOUR_COLUMN):\n" + "\n".join(
    f"  {task:<20} {columns}" for task, (_, columns) in TASKS.items()
)


def _pairs(items: list[str] | None, option: str) -> dict[str, str]:
    pairs = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"{option} takes KEY=VALUE, got {item!r}.")
        pairs[key] = value
    return pairs


def build_parser() -> argparse.ArgumentParser:
    from chemtag.domains import TAGGED_DOMAINS
    from chemtag.representations import MOLECULE_LANGUAGES

    parser = argparse.ArgumentParser(prog="chemtag", description="Tag-LLM predictors for chemistry and biology.")
    commands = parser.add_subparsers(dest="command", required=True)

    fit = commands.add_parser("fit", help="train a model on a table and save it as a folder",
                              epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    fit.add_argument("table", help="training table: CSV, TSV (optionally .gz) or Parquet")
    fit.add_argument("--task", required=True, choices=TASKS)
    fit.add_argument("-o", "--output", required=True, help="folder to write the fitted model to")
    fit.add_argument("--target", default="Y", help="column with the values to learn (default: Y)")
    fit.add_argument("--column", action="append", metavar="FIELD=COLUMN", help="read FIELD from COLUMN")
    fit.add_argument("--domain", action="append", metavar="COLUMN=DOMAIN", help="regression/classification inputs")
    fit.add_argument("--function-tag", default=None, help="function tag name (regression/classification)")
    fit.add_argument("--backbone", default=None, help="Hub id, local folder or 'smollm2-135m' (default)")
    fit.add_argument("--max-epochs", type=int, default=None)
    fit.add_argument("--batch-size", type=int, default=None)
    fit.add_argument("--lr", type=float, default=None)
    _add_head_training(fit)
    fit.add_argument("--head", choices=("linear", "kernel"), default=None,
                     help="regression head: linear (default), or kernel ridge over the training rows' states "
                          "(over --kernel-landmarks rows beyond that many), fitted after the tags (reads more; the "
                          "saved model keeps those states)")
    fit.add_argument("--kernel-landmarks", type=int, default=None,
                     help="with --head kernel: rows up to which its fit is exact, and the landmark rows of its "
                          "approximate fit beyond (default 4096)")
    fit.add_argument("--bf16", action="store_true", help="bfloat16 autocast for the backbone")
    fit.add_argument("--device", default=None, help="e.g. cpu or cuda")
    fit.add_argument("--on-invalid", choices=("raise", "nan"), default=None,
                     help="invalid SMILES/protein rows: stop with an error (default) or skip them")
    fit.add_argument("--quiet", action="store_true")

    predict = commands.add_parser("predict", help="predict a table with a saved model")
    predict.add_argument("model", help="folder written by `chemtag fit`")
    predict.add_argument("table", help="table with the same input columns as for fitting")
    predict.add_argument("-o", "--output", required=True, help="CSV to write: the input table plus a 'prediction' column")
    predict.add_argument("--on-invalid", choices=("raise", "nan"), default=None,
                         help="invalid rows: stop with an error, or predict NaN for them")

    pretrain = commands.add_parser("pretrain", help="stage 1: train a domain tag on unlabelled text into a tag library")
    pretrain.add_argument("corpus", help="one text a line (.txt, .txt.gz) or FASTA (.fasta, .fa, optionally .gz)")
    pretrain.add_argument("--domain", required=True, choices=TAGGED_DOMAINS, help="the domain tag to train")
    pretrain.add_argument("--corpus-language", choices=MOLECULE_LANGUAGES, default=None,
                          help="the corpus's molecular language when it differs from --domain: entries are "
                               "converted, e.g. a SMILES corpus with --domain SELFIES")
    pretrain.add_argument("-o", "--output", required=True, help="tag library folder (created, or extended)")
    pretrain.add_argument("--backbone", default="smollm2-135m")
    pretrain.add_argument("--steps", type=int, default=500)
    pretrain.add_argument("--batch-size", type=int, default=16)
    pretrain.add_argument("--lr", type=float, default=1e-3)
    pretrain.add_argument("--max-tokens", type=int, default=128, help="text tokens kept per entry")
    pretrain.add_argument("--tag-length", type=int, default=10)
    pretrain.add_argument("--validation", type=int, default=200, help="entries held out to measure the loss")
    pretrain.add_argument("--limit", type=int, default=None, help="use at most this many training entries")
    pretrain.add_argument("--spaced", action="store_true", help="write protein residues space-separated")
    pretrain.add_argument("--bf16", action="store_true")
    pretrain.add_argument("--seed", type=int, default=0)
    pretrain.add_argument("--device", default="cpu", help="e.g. cpu or cuda (with --distributed: cpu or not)")
    pretrain.add_argument("--distributed", action="store_true",
                          help="data-parallel over the processes of `accelerate launch` (gradients averaged)")

    function = commands.add_parser(
        "pretrain-function", help="stage 2: train a function tag and head on labels computed from a corpus")
    function.add_argument("corpus", help="SMILES (one a line) for QED, FASTA for Descriptor")
    function.add_argument("--task", required=True, choices=("QED", "Descriptor"))
    function.add_argument("-o", "--output", required=True,
                          help="tag library folder; the estimator goes to OUTPUT/estimators/<class name>/")
    function.add_argument("--backbone", default="smollm2-135m")
    function.add_argument("--n-train", type=int, default=2000)
    function.add_argument("--n-test", type=int, default=200, help="held-out entries to measure the MSE on")
    function.add_argument("--skip", type=int, default=0,
                          help="pass over the first SKIP entries of the seeded order (e.g. stage 1's)")
    function.add_argument("--max-length", type=int, default=None, help="pass over longer entries (characters)")
    function.add_argument("--max-epochs", type=int, default=20)
    function.add_argument("--lr", type=float, default=None)
    _add_head_training(function)
    function.add_argument("--seed", type=int, default=0)
    function.add_argument("--domain-tags", default=None,
                          help="tag library folder to take the domain tag from (default: the shipped tags)")
    function.add_argument("--device", default="cpu", help="e.g. cpu or cuda (with --distributed: cpu or not)")
    function.add_argument("--distributed", action="store_true",
                          help="data-parallel over the processes of `accelerate launch` (gradients averaged)")

    demo = commands.add_parser("demo", help="fit a QED regressor on bundled SMILES with the default backbone")
    demo.add_argument("--n-train", type=int, default=None, help="training SMILES (default: run_demo's)")
    demo.add_argument("--max-epochs", type=int, default=None, help="epochs (default: run_demo's)")
    return parser


def _add_head_training(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--head-training", metavar="{joint,refit}", default=None,
                        help="after the initial probe, train the head with the tags (joint, the default) or fit it "
                             "again in closed form after every epoch (refit)")


def _fit(args) -> None:
    from chemtag import estimators
    from chemtag.datasets import read_table

    table = read_table(args.table)
    if args.target not in table.columns:
        raise ValueError(f"{args.table} has no target column {args.target!r}; its columns are {list(table.columns)}. Use --target.")
    cls = estimators.ESTIMATORS[TASKS[args.task][0]]
    options = {
        "columns": _pairs(args.column, "--column") or None, "backbone": args.backbone, "max_epochs": args.max_epochs,
        "batch_size": args.batch_size, "lr": args.lr, "device": args.device, "on_invalid": args.on_invalid,
        "bf16": args.bf16 or None, "head_training": args.head_training, "verbose": 0 if args.quiet else None,
    }
    for flag, name in (("--head", "head"), ("--kernel-landmarks", "kernel_landmarks")):
        if getattr(args, name) is not None:
            if args.task == "classification":
                raise ValueError(f"{flag} applies to the regression tasks, not 'classification'.")
            options[name] = getattr(args, name)
    if args.task in ("regression", "classification"):
        options |= {"domains": _pairs(args.domain, "--domain") or None, "function_tag": args.function_tag}
    elif args.domain or args.function_tag:
        raise ValueError(f"--domain and --function-tag apply to the regression and classification tasks, not {args.task!r}.")
    model = cls(**{k: v for k, v in options.items() if v is not None})
    model.fit(table.drop(columns=[args.target]), table[args.target])
    model.save(args.output)
    print(f"saved {cls.__name__} to {args.output}")


def _predict(args) -> None:
    from chemtag.datasets import read_table
    from chemtag.estimators._base import TagLLMEstimator

    model = TagLLMEstimator.load(args.model)
    if args.on_invalid:
        model.set_params(on_invalid=args.on_invalid)
    table = read_table(args.table)
    table["prediction"] = model.predict(table)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.output, index=False)
    print(f"wrote {len(table)} predictions to {args.output} ({int(table['prediction'].isna().sum())} NaN)")


def _accelerator(args: argparse.Namespace) -> "Accelerator | None":
    """The ``Accelerator`` of a ``--distributed`` run (on the CPU for ``--device cpu``), or None."""
    from accelerate import Accelerator

    return Accelerator(cpu=args.device == "cpu") if args.distributed else None


def _pretrain(args) -> None:
    from chemtag.backbones import load_backbone
    from chemtag.protocol import pretrain_into_library

    accelerator = _accelerator(args)
    device = accelerator.device if accelerator else args.device
    measured = pretrain_into_library(
        load_backbone(args.backbone, device=device), args.corpus, args.domain, args.output, limit=args.limit,
        accelerator=accelerator, validation=args.validation, spaced=args.spaced,
        corpus_language=args.corpus_language, tag_length=args.tag_length, steps=args.steps,
        batch_size=args.batch_size, lr=args.lr, max_tokens=args.max_tokens, bf16=args.bf16, random_state=args.seed,
    )
    if accelerator is not None:
        accelerator.end_training()  # leave the process group cleanly before exit
    if not measured:  # a non-main process of a distributed run
        return
    losses = ", ".join(f"{name} {value:.4f}" for name, value in measured.items())
    print(f"<{args.domain}> written to {args.output}; held-out next-token loss (nats/token): {losses}")


def _pretrain_function(args) -> None:
    from chemtag.parallel import ONE_PROCESS
    from chemtag.stage2 import pretrain_function_estimator

    accelerator = _accelerator(args)
    device = str(accelerator.device) if accelerator else args.device
    params = {"backbone": args.backbone, "max_epochs": args.max_epochs, "lr": args.lr, "device": device,
              "domain_tags": args.domain_tags, "head_training": args.head_training}
    measured = pretrain_function_estimator(
        args.corpus, args.task, args.output, n_train=args.n_train, n_test=args.n_test, skip=args.skip,
        max_length=args.max_length, seed=args.seed, processes=ONE_PROCESS if accelerator is None else accelerator,
        **{k: v for k, v in params.items() if v is not None},
    )
    if accelerator is not None:
        accelerator.end_training()  # leave the process group cleanly before exit
    if not measured:  # a non-main process of a distributed run
        return
    print(f"{measured['estimator']} written to {args.output}/estimators/; held-out MSE {measured['test_mse']:.4g} "
          f"(mean predictor {measured['mean_predictor_test_mse']:.4g})")


def _demo(args) -> None:
    from chemtag.demo import run_demo

    options = {"n_train": args.n_train, "max_epochs": args.max_epochs}
    result = run_demo(**{name: value for name, value in options.items() if value is not None})
    print(
        f"QEDRegressor on {result['n_train']} ChEMBL SMILES, {result['n_test']} held out: "
        f"MSE {result['mse']:.4f} (mean predictor {result['mean_predictor_mse']:.4f}) in {result['seconds']:.0f} s"
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        {"fit": _fit, "predict": _predict, "pretrain": _pretrain, "pretrain-function": _pretrain_function,
         "demo": _demo}[args.command](args)
    except (ValueError, TypeError, FileNotFoundError, ModuleNotFoundError) as error:
        print(f"chemtag {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0
