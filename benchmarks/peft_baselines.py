"""Parameter-efficient baselines on chemtag's backbone: a ridge probe, prompt tuning and LoRA (``peft``).

Each writes a row as the chemtag preset's prompt with the tags left out (``"Input: The SMILES of the
molecule is CCO. Output: The QED is"``) and reads the backbone's final hidden states:

- :class:`ProbeRegressor`: ridge regression (penalty chosen by cross-validation on the training
  rows) on the frozen model's mean-pooled or last-token state.
- :class:`PeftRegressor`: ``peft`` prompt tuning (``p`` virtual tokens before the prompt) or LoRA on
  the attention projections, with chemtag's linear head on the last token, trained like chemtag's
  tags (AdamW, learning rate 1e-3, standardised targets) for a fixed number of epochs.
"""

from __future__ import annotations

import copy
import re

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
from chemtag.training import length_bucketed_batches

POOLINGS = ("mean", "last")
PEFT_METHODS = ("prompt-tuning", "lora")
_TAG = re.compile(r"\s*<[A-Za-z][\w.\-]*>")
_FIELD = re.compile(r"\{([^{}<>]+)\}")
_STATES: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}


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
    ``lora_rank`` is LoRA's ``r`` (``lora_alpha = 2 r``, ``peft``'s default target modules).
    """

    def __init__(self, template: str, backbone: str = DEFAULT_BACKBONE, method: str = "lora", epochs: int = 2,
                 batch_size: int = 16, lr: float = 1e-3, virtual_tokens: int = DEFAULT_TAG_LENGTH,
                 lora_rank: int = 8, random_state: int = 0):
        self.template = template
        self.backbone = backbone
        self.method = method
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
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
        """Head outputs ``(B,)`` from the final hidden state at each row's last token."""
        hidden = self.model_(input_ids=ids, attention_mask=mask).last_hidden_state
        shift = self.virtual_tokens if self.method == "prompt-tuning" else 0
        return self.head_(hidden[torch.arange(len(ids)), shift + lengths - 1].float()).squeeze(-1)

    def fit(self, X: pd.DataFrame, y) -> "PeftRegressor":
        from peft import get_peft_model

        config = self._peft_config()
        backbone = load_backbone(self.backbone)
        y = np.asarray(y, dtype=float)
        self.y_mean_, self.y_scale_ = float(y.mean()), float(y.std()) or 1.0
        targets = torch.as_tensor((y - self.y_mean_) / self.y_scale_, dtype=torch.float32)
        tokens = _tokens(backbone, plain_prompts(self.template, X))
        rng = np.random.default_rng(self.random_state)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.random_state)
            self.model_ = get_peft_model(copy.deepcopy(backbone.model.base_model), config)
            self.head_ = LinearHead(backbone.hidden_size, 1)
            parameters = [p for p in self.model_.parameters() if p.requires_grad] + list(self.head_.parameters())
            optimizer = torch.optim.AdamW(parameters, lr=self.lr)
            self.history_ = []
            for epoch in range(1, self.epochs + 1):
                self.model_.train()
                total = 0.0
                for rows in length_bucketed_batches(np.array([len(t) for t in tokens]), self.batch_size, rng):
                    loss = functional.mse_loss(self._readout(*_batch(tokens, rows, backbone.tokenizer.pad_token_id)),
                                               targets[rows])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total += loss.item() * len(rows)
                self.history_.append({"epoch": epoch, "train_loss": total / len(tokens)})
        self.model_.eval()
        return self

    @torch.no_grad()
    def predict(self, X: pd.DataFrame) -> np.ndarray:
        backbone = load_backbone(self.backbone)
        tokens = _tokens(backbone, plain_prompts(self.template, X))
        order = np.argsort([len(t) for t in tokens], kind="stable")
        outputs = np.empty(len(tokens))
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            outputs[rows] = self._readout(*_batch(tokens, rows, backbone.tokenizer.pad_token_id)).numpy()
        return outputs * self.y_scale_ + self.y_mean_
