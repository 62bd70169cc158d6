"""Chemprop (a directed message-passing network, Heid et al. 2024) run as itself, in its own environment.

Chemprop's dependencies (its own torch, Lightning and RDKit) are kept out of the project's
environment: the first use creates a virtual environment under ``.bench-envs/chemprop`` at the project
root with :data:`REQUIREMENTS` installed by pip, records ``pip freeze`` in it, and every later use
reuses it. :class:`ChempropRegressor` writes the training rows to CSV, runs ``chemprop train`` (its
own seeded validation split of those rows, no test split) and ``chemprop predict`` in that environment
and reads the predictions back.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, RegressorMixin

ENV_DIR = Path(__file__).resolve().parents[1] / ".bench-envs" / "chemprop"
REQUIREMENTS = ("chemprop==2.3.1", "torch==2.13.0")  # torch pinned: a CPU wheel instead of a CUDA build
FREEZE_FILE = "installed.txt"  # written last: its presence marks a complete environment
SMILES, TARGET = "smiles", "y"  # column names of the CSV files handed to chemprop
WARMUP_EPOCHS = 2  # chemprop's default; it needs fewer warmup epochs than epochs
STDERR_LINES = 25  # lines of a failed command's stderr quoted in the error


class ChempropError(RuntimeError):
    """A command of chemprop's environment (creating it, training, predicting) failed."""


def run_command(command: Sequence[str | Path], what: str) -> str:
    """Run ``command`` and return its stdout; on failure raise :class:`ChempropError` with its stderr's tail."""
    try:
        done = subprocess.run([str(part) for part in command], capture_output=True, text=True)
    except OSError as error:
        raise ChempropError(f"Could not {what}: {error}") from error
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-STDERR_LINES:])
        raise ChempropError(f"Could not {what} (exit status {done.returncode}): {' '.join(map(str, command))}\n{tail}")
    return done.stdout


def environment_ready(env_dir: Path = ENV_DIR) -> bool:
    """Whether chemprop's environment has been created completely."""
    return (env_dir / FREEZE_FILE).is_file()


def ensure_environment(env_dir: Path = ENV_DIR, python: str | Path = sys.executable) -> Path:
    """The ``chemprop`` executable of ``env_dir``, creating the environment with ``python -m venv`` first if needed."""
    if not environment_ready(env_dir):
        print(f"Creating chemprop's environment in {env_dir} (once): pip install {' '.join(REQUIREMENTS)}",
              file=sys.stderr, flush=True)
        run_command([python, "-m", "venv", "--clear", env_dir], f"create a virtual environment in {env_dir}")
        pip = [env_dir / "bin" / "python", "-m", "pip"]
        run_command([*pip, "install", *REQUIREMENTS],
                    f"install {' '.join(REQUIREMENTS)} into {env_dir} (pip needs PyPI to be reachable)")
        (env_dir / FREEZE_FILE).write_text(run_command([*pip, "freeze"], "list the installed versions"))
    return env_dir / "bin" / "chemprop"


def train_command(executable: Path, data: Path, output_dir: Path, epochs: int, validation_fraction: float,
                  seed: int) -> list[str]:
    """``chemprop train`` on ``data`` (columns ``smiles``, ``y``): regression on CPU, seeded, no test split."""
    return [str(executable), "train", "--data-path", str(data), "--output-dir", str(output_dir),
            "--smiles-columns", SMILES, "--target-columns", TARGET, "--task-type", "regression",
            "--epochs", str(epochs), "--warmup-epochs", str(min(WARMUP_EPOCHS, epochs - 1)),
            "--split-sizes", str(1 - validation_fraction), str(validation_fraction), "0",
            "--data-seed", str(seed), "--pytorch-seed", str(seed), "--accelerator", "cpu", "--devices", "1"]


def predict_command(executable: Path, data: Path, model_dir: Path, output: Path) -> list[str]:
    """``chemprop predict`` of ``data``'s ``smiles`` column with the model saved under ``model_dir``, on CPU."""
    return [str(executable), "predict", "--test-path", str(data), "--model-paths", str(model_dir),
            "--output", str(output), "--smiles-columns", SMILES, "--accelerator", "cpu", "--devices", "1"]


def read_history(model_dir: Path) -> list[dict]:
    """Per-epoch ``train_loss`` and ``valid_loss`` (MSE on standardised targets) from Lightning's CSV log."""
    logs = sorted(model_dir.glob("**/trainer_logs/*/metrics.csv"))
    if not logs:
        return []
    metrics = pd.read_csv(logs[-1])
    by_epoch = metrics.groupby("epoch")[["train_loss_epoch", "val_loss"]].first()
    return [{"epoch": int(epoch) + 1, "train_loss": float(row["train_loss_epoch"]),
             "valid_loss": float(row["val_loss"])} for epoch, row in by_epoch.iterrows()]


class ChempropRegressor(RegressorMixin, BaseEstimator):
    """Chemprop's default MPNN regressor on one SMILES column, trained and applied in chemprop's environment.

    ``executable`` is the ``chemprop`` command to run; ``None`` uses (and first creates) the benchmark's
    environment. ``validation_fraction`` of the training rows, drawn by chemprop with ``random_state``,
    choose the epoch that is kept.
    """

    def __init__(self, smiles_column: str = "Drug", epochs: int = 50, validation_fraction: float = 0.1,
                 random_state: int = 0, executable: Path | None = None):
        self.smiles_column = smiles_column
        self.epochs = epochs
        self.validation_fraction = validation_fraction
        self.random_state = random_state
        self.executable = executable

    def _table(self, X: pd.DataFrame, y: np.ndarray | None = None) -> pd.DataFrame:
        table = pd.DataFrame({SMILES: X[self.smiles_column].to_numpy()})
        return table if y is None else table.assign(**{TARGET: np.asarray(y, dtype=float)})

    def fit(self, X: pd.DataFrame, y) -> "ChempropRegressor":
        self.executable_ = Path(self.executable) if self.executable is not None else ensure_environment()
        self.workdir_ = tempfile.TemporaryDirectory(prefix="chemprop-")  # removed with the fitted model
        data, self.model_dir_ = Path(self.workdir_.name) / "train.csv", Path(self.workdir_.name) / "model"
        self._table(X, y).to_csv(data, index=False)
        run_command(train_command(self.executable_, data, self.model_dir_, self.epochs, self.validation_fraction,
                                  self.random_state), "train chemprop")
        self.history_ = read_history(self.model_dir_)
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        with tempfile.TemporaryDirectory(prefix="chemprop-predict-") as folder:
            data, output = Path(folder) / "test.csv", Path(folder) / "predictions.csv"
            self._table(X).to_csv(data, index=False)
            run_command(predict_command(self.executable_, data, self.model_dir_, output), "predict with chemprop")
            return pd.read_csv(output)[TARGET].to_numpy(float)
