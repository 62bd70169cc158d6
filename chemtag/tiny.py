"""Tiny random backbones for tests: built from a config and a locally trained tokenizer, no download."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, PreTrainedTokenizerFast

TINY_BACKBONES = ("tiny-llama", "tiny-gpt2")
_VOCAB_SIZE = 384
_SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>"]
# Text the byte-level BPE learns its merges from: template words, SMILES and protein letters.
_CORPUS = [
    "Input: The SMILES of the molecule is . Output: The QED is",
    "Input: The protein sequence is . The SMILES of the drug is . Output: The binding affinity is",
    "Drug one SMILES drug two cell line synergy descriptor value is",
    "CC(=O)Oc1ccccc1C(=O)O CCN(CC)CC c1ccc2[nH]ccc2c1 O=C(O)c1ccccc1 Cl Br F N#C [C@@H] [C@H]",
    "M K T A Y I A K Q R Q I S F V K S H F S R Q L E E R L G L I E V Q A P I L S R V G D G T Q D N L S G A E K A V Q V K",
    "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKWYCHP",
]


def build(name: str, seed: int = 0):
    """A tiny random model and tokenizer for ``name`` in :data:`TINY_BACKBONES`; same seed, same weights."""
    tokenizer = _train_tokenizer()
    if name == "tiny-llama":
        config = LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
            tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
        )
    elif name == "tiny-gpt2":
        config = GPT2Config(
            vocab_size=len(tokenizer), n_embd=64, n_layer=2, n_head=4, n_positions=4096,
            bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
        )
    else:
        raise ValueError(f"Unknown tiny backbone {name!r}; choose one of {TINY_BACKBONES}.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model, tokenizer


def _train_tokenizer() -> PreTrainedTokenizerFast:
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_VOCAB_SIZE, special_tokens=_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    bpe.train_from_iterator(_CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|pad|>")
