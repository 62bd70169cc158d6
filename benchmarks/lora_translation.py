"""LoRA baseline for molecule translation (method ``lora`` of ``benchmarks/translate.py``).

``peft`` LoRA adapters on the attention projections of a private copy of the causal LM (the shared,
frozen backbone is never modified), prompted as the prompt-tuning translator without its tag, the
languages written as words: ``Input: SMILES CCO Output: SELFIES``. Training and decoding are those of
chemtag's generator: next-token loss on the target tokens and the end token only
(:func:`chemtag.generation.target_token_losses`), AdamW with chemtag's warmup over length-bucketed
batches, greedy decoding that stops at the end token or after ``max_new_tokens``
(:func:`chemtag.generation.generate_after`).
"""

from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from chemtag import MoleculeTranslator
from chemtag.backbones import DEFAULT_BACKBONE, load_backbone
from chemtag.generation import (append_targets, decode, generate_after, target_loss, target_token_losses,
                                untagged_prompts)
from chemtag.model import Batch, autocast
from chemtag.templates import EncodedPrompts
from chemtag.training import TrainingConfig, length_bucketed_batches, warm_up

from benchmarks.peft_baselines import plain_prompts

# The prompt-tuning translator's template with {source} and {target} as fields: plain_prompts drops its tag.
WORDS_TEMPLATE = MoleculeTranslator(language_tags=False).direction_template("{source}", "{target}")


class LoraTranslator(BaseEstimator):
    """LoRA on a copy of the backbone's causal LM, trained to write each row's target text after its prompt.

    ``X`` is a DataFrame with columns ``text``, ``source`` and ``target`` (each row's direction), as
    :class:`~chemtag.MoleculeTranslator` reads it; ``y`` the target texts. ``lora_rank`` is LoRA's ``r``
    (``lora_alpha = 2 r``, dropout 0.05, ``peft``'s default target modules: the attention projections),
    as in :class:`benchmarks.peft_baselines.PeftRegressor`. Training runs ``max_epochs`` epochs of
    ``batch_size`` rows and keeps the last. ``history_`` holds one ``{"epoch", "train_loss"}`` per epoch
    (nats per target token); ``model_`` is the adapted copy.
    """

    def __init__(self, backbone: str = DEFAULT_BACKBONE, lora_rank: int = 8, max_epochs: int = 3,
                 batch_size: int = 4, lr: float = 1e-3, max_new_tokens: int = 64, bf16: bool = False,
                 random_state: int = 0):
        self.backbone = backbone
        self.lora_rank = lora_rank
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.max_new_tokens = max_new_tokens
        self.bf16 = bf16
        self.random_state = random_state

    def prompts(self, X: pd.DataFrame, y: Sequence[str] | None = None) -> EncodedPrompts:
        """Each row's prompt as tokens, followed by its target text and the end token where ``y`` is given."""
        tokenizer = load_backbone(self.backbone).tokenizer
        prompts = untagged_prompts(tokenizer(plain_prompts(WORDS_TEMPLATE, X)).input_ids)
        return prompts if y is None else append_targets(prompts, tokenizer, list(y))

    def losses(self, batch: Batch) -> torch.Tensor:
        """``(B, 2)``: each row's summed next-token loss over its target tokens and their count."""
        hidden = self.model_.base_model(input_ids=batch.input_ids,
                                        attention_mask=batch.attention_mask.long()).last_hidden_state
        return target_token_losses(hidden, batch, self.model_.get_output_embeddings())

    def fit(self, X: pd.DataFrame, y: Sequence[str]) -> "LoraTranslator":
        from peft import LoraConfig, inject_adapter_in_model

        prompts = self.prompts(X, y)
        config = LoraConfig(r=self.lora_rank, lora_alpha=2 * self.lora_rank, lora_dropout=0.05)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.random_state)
            self.model_ = inject_adapter_in_model(config, copy.deepcopy(load_backbone(self.backbone).model))
            self.history_ = self._train(prompts, np.random.default_rng(self.random_state))
        return self

    def _train(self, prompts: EncodedPrompts, rng: np.random.Generator) -> list[dict]:
        """``max_epochs`` epochs of AdamW on the adapters; the history."""
        pad_id, device = load_backbone(self.backbone).tokenizer.pad_token_id, self.model_.device
        optimizer = torch.optim.AdamW([p for p in self.model_.parameters() if p.requires_grad], lr=self.lr,
                                      weight_decay=0.0)
        history = []
        self.model_.train()
        for epoch in range(1, self.max_epochs + 1):
            total = 0.0
            for rows in length_bucketed_batches(prompts.lengths, self.batch_size, rng):
                with autocast(device, self.bf16):
                    loss = target_loss(self.losses(Batch.collate(prompts, rows, pad_id, device)))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                warm_up(optimizer, self.lr, TrainingConfig.warmup_steps)
                optimizer.step()
                total += loss.item() * len(rows)
            history.append({"epoch": epoch, "train_loss": total / len(prompts)})
        self.model_.eval()
        return history

    def predict(self, X: pd.DataFrame) -> list[str]:
        """The text written after each row's prompt, greedy, up to the end token or ``max_new_tokens``."""
        check_is_fitted(self, "model_")
        tokenizer = load_backbone(self.backbone).tokenizer
        ids = generate_after(self.model_, tokenizer, self.prompts(X),
                             lambda batch: self.model_.get_input_embeddings()(batch.input_ids),
                             self.max_new_tokens, batch_size=self.batch_size, bf16=self.bf16)
        return decode(tokenizer, ids)
