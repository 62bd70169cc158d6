"""Parameter-efficient baselines on chemtag's backbone: a ridge probe, prompt tuning and LoRA (``peft``).

Each writes a row as the chemtag preset's prompt with the tags left out (``"Input: The SMILES of the
molecule is CCO. Output: The QED is"``) and reads the backbone's final hidden states:

- :class:`ProbeRegressor`: ridge regression (penalty chosen by cross-validation on the training
  rows) on the frozen model's mean-pooled or last-token state.
- :class:`PeftRegressor`: ``peft`` prompt tuning (``p`` virtual tokens before the prompt) or LoRA on
  the attention projections, with chemtag's linear head on the last token, trained like chemtag's
  tags: standardised targets, a seeded validation split, the head first fitted as a linear probe to
  the untrained model's readouts (epoch 0), then AdamW (learning rate 1e-4, warmed up as chemtag's) with early stopping and
  the best epoch restored.
"""

from __future__ import annotations

import copy
import math
import re
import warnings

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.linear_model import RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch.nn import functional

from chemtag.backbones import DEFAULT_BACKBONE, Backbone, load_backbone
from chemtag.heads import LinearHead
from chemtag.model import pad_rows
from chemtag.tags import DEFAULT_TAG_LENGTH
from chemtag.training import TrainingConfig, fit_head, length_bucketed_batches, validation_split, warm_up

POOLINGS = ("mean", "last")
PEFT_METHODS = ("prompt-tuning", "lora")
_TAG = re.compile(r"\s*<[A-Za-z][\w.\-]*>")
_FIELD = re.compile(r"\{([^{}<>]+)\}")
_STATES: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}


WARMUP_STEPS = TrainingConfig.warmup_steps  # chemtag's linear warmup


def plain_prompts(template: str, X: pd.DataFrame) -> list[str]:
    """``template`` with its ``<Tag>`` markers removed and each ``{field}`` filled from ``X``'s column."""
    text = _TAG.sub("", template).strip()
    return [_FIELD.sub(lambda match: str(row[match.group(1)]), text) for _, row in X.iterrows()]


def _tokens(backbone: Backbone, prompts: list[str]) -> list[np.ndarray]:
    return [np.asarray(ids) for ids in backbone.tokenizer(prompts)["input_ids"]]


def _batch(tokens: list[np.ndarray], rows: np.ndarray, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(B, L)`` right-padded ids, ``(B, L)`` mask and ``(B,)`` lengths of ``rows``."""
    chosen = [tokens[i] for i in rows]
    ids = torch.as_tensor(pad_rows(chosen, pad_id))
    mask = torch.as_tensor(pad_rows([np.ones(len(t), dtype=np.int64) for t in chosen], 0))
    return ids, mask, mask.sum(dim=1)


@torch.no_grad()
def frozen_states(backbone: Backbone, prompts: list[str], batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Mean-pooled and last-token final hidden states of the frozen backbone: two ``(n, d)`` float32 arrays.

    Remembered per backbone and prompt within the process, so probes that pool differently share one pass.
    """
    missing = list(dict.fromkeys(p for p in prompts if (backbone.name, p) not in _STATES))
    tokens = _tokens(backbone, missing) if missing else []
    order = np.argsort([len(t) for t in tokens], kind="stable")
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        ids, mask, lengths = _batch(tokens, rows, backbone.tokenizer.pad_token_id)
        hidden = backbone.model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        mean = (hidden * mask[..., None]).sum(dim=1) / lengths[:, None]
        last = hidden[torch.arange(len(rows)), lengths - 1]
        for i, row in enumerate(rows):
            _STATES[backbone.name, missing[row]] = mean[i].numpy(), last[i].numpy()
    states = [_STATES[backbone.name, p] for p in prompts]
    return np.stack([s[0] for s in states]), np.stack([s[1] for s in states])


class ProbeRegressor(RegressorMixin, BaseEstimator):
    """Ridge regression on the frozen backbone's pooled final hidden state of each row's prompt."""

    def __init__(self, template: str, backbone: str = DEFAULT_BACKBONE, pooling: str = "mean",
                 alphas: tuple[float, ...] = tuple(np.logspace(-2, 4, 13)), batch_size: int = 16):
        self.template = template
        self.backbone = backbone
        self.pooling = pooling
        self.alphas = alphas
        self.batch_size = batch_size

    def _features(self, X: pd.DataFrame) -> np.ndarray:
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}.")
        states = frozen_states(load_backbone(self.backbone), plain_prompts(self.template, X), self.batch_size)
        return states[POOLINGS.index(self.pooling)]

    def fit(self, X: pd.DataFrame, y) -> "ProbeRegressor":
        self.model_ = make_pipeline(StandardScaler(), RidgeCV(alphas=self.alphas)).fit(self._features(X), y)
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return self.model_.predict(self._features(X))


class PeftRegressor(RegressorMixin, BaseEstimator):
    """``peft`` prompt tuning or LoRA on a private copy of the backbone, with a linear head on the last token.

    ``virtual_tokens`` is prompt tuning's ``p`` (initialised from sampled vocabulary embeddings);
    ``lora_rank`` is LoRA's ``r`` (``lora_alpha = 2 r``, ``peft``'s default target modules). Trained
    like chemtag's tags: ``validation_fraction`` of the rows (seeded; 0 for none) is held out, epoch 0
    fits the head as a linear probe (:meth:`~chemtag.heads.LinearHead.initialise`) to the readouts of
    the untrained ``peft`` model, then up to ``epochs`` epochs of AdamW stop after ``patience`` epochs
    without a lower validation loss and the best epoch (epoch 0 included) is restored. Without
    validation rows the last epoch is kept.
    """

    def __init__(self, template: str, backbone: str = DEFAULT_BACKBONE, method: str = "lora", epochs: int = 2,
                 batch_size: int = 16, lr: float = 1e-4, validation_fraction: float = 0.1, patience: int = 5,
                 virtual_tokens: int = DEFAULT_TAG_LENGTH, lora_rank: int = 8, random_state: int = 0):
        self.template = template
        self.backbone = backbone
        self.method = method
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.virtual_tokens = virtual_tokens
        self.lora_rank = lora_rank
        self.random_state = random_state

    def _peft_config(self):
        from peft import LoraConfig, PromptTuningConfig, PromptTuningInit, TaskType

        if self.method == "prompt-tuning":
            return PromptTuningConfig(task_type=TaskType.FEATURE_EXTRACTION, num_virtual_tokens=self.virtual_tokens,
                                      prompt_tuning_init=PromptTuningInit.SAMPLE_VOCAB)
        if self.method == "lora":
            return LoraConfig(task_type=TaskType.FEATURE_EXTRACTION, r=self.lora_rank, lora_alpha=2 * self.lora_rank,
                              lora_dropout=0.05)
        raise ValueError(f"method must be one of {PEFT_METHODS}, got {self.method!r}.")

    def _readout(self, ids: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The head's input ``(B, d)``, float32: the final hidden state at each row's last token."""
        hidden = self.model_(input_ids=ids, attention_mask=mask).last_hidden_state
        shift = self.virtual_tokens if self.method == "prompt-tuning" else 0
        return hidden[torch.arange(len(ids)), shift + lengths - 1].float()

    @torch.no_grad()
    def _readouts(self, tokens: list[np.ndarray], rows: np.ndarray) -> torch.Tensor:
        """:meth:`_readout` of prompts ``rows`` in eval mode, ``(len(rows), d)`` in that order."""
        self.model_.eval()
        order = np.argsort([len(tokens[i]) for i in rows], kind="stable")
        readouts = torch.empty(len(rows), self.head_.linear.in_features)
        for start in range(0, len(order), self.batch_size):
            chosen = order[start:start + self.batch_size]
            readouts[chosen] = self._readout(*_batch(tokens, rows[chosen], self.pad_id_))
        return readouts

    def _untrained_readouts(self, backbone: Backbone, prompts: list[str], tokens: list[np.ndarray]) -> torch.Tensor:
        """The untrained ``peft`` model's readouts of every row, ``(n, d)``. LoRA starts as the frozen backbone
        (its ``B`` matrices are zero), so its readouts are the last-token states that the probes share."""
        if self.method == "lora":
            return torch.as_tensor(frozen_states(backbone, prompts, self.batch_size)[1])
        return self._readouts(tokens, np.arange(len(tokens)))

    def _probe(self, readouts: torch.Tensor, targets: torch.Tensor, train_rows: np.ndarray,
               valid_rows: np.ndarray) -> dict:
        """Epoch 0: fit the head to the untrained model's ``readouts`` ``(n, d)``; return its history record."""
        readouts = readouts[np.concatenate([train_rows, valid_rows])]
        return {"epoch": 0, **fit_head(self.head_, readouts, targets, train_rows, valid_rows, _loss)}

    def _epoch(self, tokens: list[np.ndarray], targets: torch.Tensor, train_rows: np.ndarray,
               optimizer: torch.optim.Optimizer, rng: np.random.Generator) -> float:
        """One pass of AdamW over ``train_rows`` in length-bucketed batches; the mean training loss."""
        self.model_.train()
        total = 0.0
        for batch in length_bucketed_batches(np.array([len(tokens[i]) for i in train_rows]), self.batch_size, rng):
            rows = train_rows[batch]
            loss = _loss(self.head_(self._readout(*_batch(tokens, rows, self.pad_id_))), targets[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            warm_up(optimizer, self.lr, WARMUP_STEPS)
            optimizer.step()
            total += loss.item() * len(rows)
        return total / len(train_rows)

    def _snapshot(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Copies of the ``peft`` model's trainable parameters and of the head's state."""
        trainable = {name: p.detach().clone() for name, p in self.model_.named_parameters() if p.requires_grad}
        return trainable, copy.deepcopy(self.head_.state_dict())

    @torch.no_grad()
    def _restore(self, snapshot: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]) -> None:
        trainable, head = snapshot
        for name, parameter in self.model_.named_parameters():
            if name in trainable:
                parameter.copy_(trainable[name])
        self.head_.load_state_dict(head)

    def _train(self, tokens: list[np.ndarray], untrained_readouts: torch.Tensor, targets: torch.Tensor,
               rng: np.random.Generator) -> None:
        """Epoch 0 (the probe), then the epochs; keep the epoch of lowest validation loss where there is one."""
        train_rows, valid_rows = validation_split(len(tokens), self.validation_fraction, rng)
        self.history_ = [self._probe(untrained_readouts, targets, train_rows, valid_rows)]
        best_loss, best, stale = self.history_[0].get("valid_loss", math.inf), self._snapshot(), 0
        parameters = [p for p in self.model_.parameters() if p.requires_grad] + list(self.head_.parameters())
        optimizer = torch.optim.AdamW(parameters, lr=self.lr, weight_decay=0.0)
        for epoch in range(1, self.epochs + 1):
            record = {"epoch": epoch, "train_loss": self._epoch(tokens, targets, train_rows, optimizer, rng)}
            self.history_.append(record)
            if not len(valid_rows):
                continue
            with torch.no_grad():
                record["valid_loss"] = _loss(self.head_(self._readouts(tokens, valid_rows)), targets[valid_rows]).item()
            if record["valid_loss"] < best_loss:
                best_loss, best, stale = record["valid_loss"], self._snapshot(), 0
            else:
                stale += 1
                if stale >= self.patience:
                    break
        if len(valid_rows):
            self._restore(best)
        self.model_.eval()

    def fit(self, X: pd.DataFrame, y) -> "PeftRegressor":
        from peft import get_peft_model

        config = self._peft_config()
        backbone = load_backbone(self.backbone)
        y = np.asarray(y, dtype=float)
        self.y_mean_, self.y_scale_ = float(y.mean()), float(y.std()) or 1.0
        self.pad_id_ = backbone.tokenizer.pad_token_id
        targets = torch.as_tensor((y - self.y_mean_) / self.y_scale_, dtype=torch.float32)
        prompts = plain_prompts(self.template, X)
        tokens = _tokens(backbone, prompts)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.random_state)
            with warnings.catch_warnings():  # peft 0.21 reads an attribute that transformers 5 deprecates
                warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
                self.model_ = get_peft_model(copy.deepcopy(backbone.model.base_model), config)
            self.head_ = LinearHead(backbone.hidden_size, 1).float()
            readouts = self._untrained_readouts(backbone, prompts, tokens)
            self._train(tokens, readouts, targets, np.random.default_rng(self.random_state))
        return self

    @torch.no_grad()
    def predict(self, X: pd.DataFrame) -> np.ndarray:
        tokens = _tokens(load_backbone(self.backbone), plain_prompts(self.template, X))
        outputs = self.head_(self._readouts(tokens, np.arange(len(tokens)))).squeeze(-1).numpy()
        return outputs * self.y_scale_ + self.y_mean_


def _loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean squared error of ``(B, 1)`` head outputs against ``(B,)`` standardised targets (chemtag's)."""
    return functional.mse_loss(outputs.squeeze(-1), targets)
