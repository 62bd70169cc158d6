"""Generation tasks of ``python -m benchmarks``: experiments whose outputs are texts.

The regression runner's methods, predictions and metrics do not apply to them: each is run by its own
script with a budget's arguments, and writes its own JSON results and Markdown report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from benchmarks import translate


@dataclass(frozen=True)
class GenerationTask:
    """A generation experiment: ``run(budget, results_dir, *, n_train, n_test, methods, seed, backbone,
    data_dir)`` runs one budget and writes ``{name}-{budget}.json`` and ``.md`` into ``results_dir``."""

    name: str
    description: str
    metrics: tuple[str, ...]
    methods: tuple[str, ...]
    run: Callable[..., dict]


GENERATION_TASKS = {
    "gen-translate": GenerationTask(
        "gen-translate", "zero-shot translation between SMILES, SELFIES, InChI and formulas (benchmarks/translate.py)",
        ("exact_match", "valid"), translate.METHODS, translate.run_budget),
}
