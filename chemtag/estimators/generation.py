"""Generative estimators: text after the function tag, and molecule translation between languages."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted

from chemtag import pretrained
from chemtag.backbones import Backbone
from chemtag.domains import get_domain
from chemtag.estimators._base import TagLLMEstimator
from chemtag.estimators._inputs import as_frame, read_fields
from chemtag.estimators._signatures import derived_init
from chemtag.generation import TaggedGenerator, append_targets, decode, target_loss
from chemtag.parallel import ONE_PROCESS, Processes
from chemtag.representations import LANGUAGES, MOLECULE_LANGUAGES
from chemtag.tags import Tag
from chemtag.templates import EncodedPrompts, Template
from chemtag.training import train
from chemtag.validation import InvalidInputError, listed, report_invalid, target_array

logger = logging.getLogger(__name__)


@dataclass
class _Rows:
    """Validated rows of ``X``: each row's template, field values and output domain; ``invalid`` ``(n,)``
    marks rows with invalid input (kept only with ``on_invalid="nan"``)."""

    templates: list[str]
    values: list[dict[str, str]]
    outputs: list[str]
    invalid: np.ndarray

    def subset(self, rows: np.ndarray) -> "_Rows":
        return _Rows([self.templates[i] for i in rows], [self.values[i] for i in rows],
                     [self.outputs[i] for i in rows], self.invalid[rows])


class TagLLMGenerator(TagLLMEstimator):
    """Text generation with a frozen LLM conditioned by tags (Tag-LLM's generative setting).

    Each row of ``X`` is written into a prompt ending with the function tag, as for
    :class:`~chemtag.TagLLMRegressor`; the output is the text the backbone writes after it with its
    own LM head, up to its end token. Training fits the function tag (domain tags too with
    ``tune_domain_tags=True``) by next-token loss on the target texts ``y`` only.

    Parameters
    ----------
    output_domain : str
        Domain of the generated text: targets are validated and normalised by it (e.g. canonical
        SMILES), :meth:`score` compares canonical forms, and its domain tag (if any) is written before
        the function tag in the default template, e.g. ``"Output: <SMILES> <Output>"``.
    max_new_tokens : int
        Longest generated text in tokens.
    num_beams : int
        1 for greedy decoding, more for beam search.

    The other parameters are those of :class:`~chemtag.TagLLMRegressor`; ``isolate_segments`` must
    stay False (generated text attends to the whole prompt), ``head_training`` ``"joint"`` and
    ``pool_fields`` False (the backbone's LM head reads each token's state only). The
    early-stopping loss is the mean target-token cross-entropy of the validation rows. Attributes are
    those of the regressor but ``head_``, which is empty (the head is the backbone's own).
    """

    __init__ = derived_init(TagLLMEstimator, pool_fields=False, output_domain="Text", max_new_tokens=64, num_beams=1)

    # ----------------------------------------------------------------- fit / predict / score
    def fit(self, X, y):
        """Train the function tag to write ``y[i]`` after the prompt of row ``i``; returns self."""
        return self._fit(X, y, ONE_PROCESS)

    def _fit(self, X, y, processes: Processes):
        with self._unchanged_if_failed():
            self._check_params()
            warm = self.warm_start and hasattr(self, "tags_")
            rows = self._read_rows(X, fitting=True)
            texts = self._read_targets(y, rows.outputs)
            keep = np.flatnonzero(~rows.invalid)
            if not len(keep):
                raise ValueError(f"All {len(texts)} rows have invalid input: nothing is left to train on "
                                 f"(on_invalid={self.on_invalid!r} drops them).")
            if rows.invalid.any():
                warnings.warn(f"Dropping {rows.invalid.sum()} of {len(texts)} rows with invalid input before fitting.",
                              stacklevel=3)
            rows, texts = rows.subset(keep), [texts[i] for i in keep]
            backbone = self._backbone()
            model = self._model_from_fitted(backbone) if warm else self._new_generator(backbone, rows)
            prompts = append_targets(self._encode(model, rows), backbone.tokenizer, texts)
            self._check_lengths(prompts.lengths, backbone, keep)
            config = self._training_config(len(prompts))
            self.history_ = train(model, prompts, torch.zeros(len(prompts)), target_loss, config,
                                  history=self.history_ if warm else None, processes=processes)
            self._store_fitted(model, backbone)
            return self

    def predict(self, X) -> list[str | None]:
        """The generated text of each row; ``None`` for rows with invalid input (``on_invalid="nan"``)."""
        return self._generate(X)[0]

    def score(self, X, y, sample_weight=None) -> float:
        """Exact match: the (weighted) share of rows whose generated text has the canonical form of ``y``
        in the output domain (e.g. the same molecule for SMILES; stripped text for ``"Text"``)."""
        generated, rows = self._generate(X)
        expected = self._read_targets(y, rows.outputs)
        matches = [text is not None and get_domain(domain).normalise(text) == target
                   for text, target, domain in zip(generated, expected, rows.outputs)]
        return float(np.average(matches, weights=sample_weight))

    def _generate(self, X) -> tuple[list[str | None], _Rows]:
        check_is_fitted(self, "tags_")
        rows = self._read_rows(X, fitting=False)
        if rows.invalid.any():
            logger.warning("%d of %d rows have invalid input; their generated texts are None.", rows.invalid.sum(),
                           len(rows.invalid))
        keep = np.flatnonzero(~rows.invalid)
        generated: list[str | None] = [None] * len(rows.outputs)
        if len(keep):
            backbone = self._backbone()
            model = self._model_from_fitted(backbone)
            prompts = self._encode(model, rows.subset(keep))
            self._check_lengths(prompts.lengths, backbone, keep)
            ids = model.generate(prompts, self.max_new_tokens, self.num_beams, self.batch_size, self.bf16,
                                 self.verbose - 1)
            for row, text in zip(keep, decode(backbone.tokenizer, ids)):
                generated[row] = text
        return generated, rows

    # ----------------------------------------------------------------- pieces
    def _check_params(self) -> None:
        super()._check_params()
        for name in ("max_new_tokens", "num_beams"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if self.isolate_segments:
            raise ValueError(f"{type(self).__name__} needs isolate_segments=False: generated text attends to the "
                             f"whole prompt.")
        if self.head_training != "joint":
            raise ValueError(f"{type(self).__name__} needs head_training='joint': its head is the backbone's own "
                             f"LM head, which stays frozen and has no closed-form fit.")
        if self.pool_fields:
            raise ValueError(f"{type(self).__name__} needs pool_fields=False: its head is the backbone's own LM head, "
                             f"which reads each token's state only.")
        self._check_output_params()

    def _check_output_params(self) -> None:
        get_domain(self.output_domain)

    def _default_template(self, fields) -> str:
        template = super()._default_template(fields)
        tag = get_domain(self.output_domain).tag
        function_tag = Template.parse(template).function_tag
        return template[:-len(f"<{function_tag}>")] + f"<{tag}> <{function_tag}>" if tag else template

    def _read_rows(self, X, fitting: bool) -> _Rows:
        """Rows of ``X`` through the template; a first fit records the columns, fields and template."""
        if fitting:
            frame = as_frame(X, self._declared_fields())
            fields = self._fields(frame)
            if not (self.warm_start and hasattr(self, "tags_")):
                self._record_input_shape(X, frame)
                self.fields_ = dict(fields)
                self.template_ = self.template or self._default_template(fields)
                self._check_template(Template.parse(self.template_))
        else:
            frame = as_frame(X, list(self.fields_))
            self._check_columns_at_predict(X, frame)
            fields = self.fields_
        values, invalid = read_fields(frame, fields, self._columns(frame), self.protein_alphabet, self.on_invalid)
        n = len(frame)
        return _Rows([self.template_] * n, [{f: values[f][i] for f in fields} for i in range(n)],
                     [self.output_domain] * n, invalid)

    @staticmethod
    def _read_targets(y, domains: list[str]) -> list[str]:
        """``y`` as normalised text in each row's output domain; invalid targets raise, naming their rows."""
        array = target_array(y, len(domains), dtype=object)
        texts = [get_domain(domain).normalise(value) for value, domain in zip(array, domains)]
        bad = [i for i, text in enumerate(texts) if text is None]
        if bad:
            described = [f"{value!r} as {domain}" for value, domain in zip(array, domains)]
            raise ValueError(f"y holds {len(bad)} invalid target texts: rows {listed(bad, described, str)}.")
        return texts

    def _function_tag_name(self) -> str:
        return Template.parse(self.template_).function_tag

    def _domain_tag_names(self, rows: _Rows) -> list[str]:
        """Domain tags of the model's table: those of every template in ``rows``."""
        function_tag = self._function_tag_name()
        return list(dict.fromkeys(name for source in dict.fromkeys(rows.templates)
                                  for name in Template.parse(source).tag_names if name != function_tag))

    def _new_generator(self, backbone: Backbone, rows: _Rows) -> TaggedGenerator:
        names = self._domain_tag_names(rows)
        function_tag = self._function_tag_name()
        tags = pretrained.domain_tags(backbone, names, self.domain_tags, self.tag_length)
        tags.append(Tag.initialise(function_tag, "function", backbone, self.tag_length))
        return TaggedGenerator(backbone, tags, [function_tag] + (names if self.tune_domain_tags else []))

    def _model_from_fitted(self, backbone: Backbone) -> TaggedGenerator:
        model = getattr(self, "_model", None)
        if model is None or model.backbone is not backbone:
            trainable = [n for n, t in self.tags_.items() if t.kind == "function" or self.tune_domain_tags]
            model = self._model = TaggedGenerator(backbone, list(self.tags_.values()), trainable)
        return model

    def _encode(self, model: TaggedGenerator, rows: _Rows) -> EncodedPrompts:
        """The rows' prompts in row order, each through its own template."""
        groups: dict[str, list[int]] = {}
        for i, source in enumerate(rows.templates):
            groups.setdefault(source, []).append(i)
        encoded = []
        for source, members in groups.items():
            template = Template.parse(source)
            values = {field: [rows.values[i][field] for i in members] for field in template.fields}
            encoded.append(self._encoder(template, model).encode(values))
        order = np.argsort(np.concatenate([members for members in groups.values()]), kind="stable")
        merged = EncodedPrompts(
            [ids for part in encoded for ids in part.input_ids], [s for part in encoded for s in part.tag_slots],
            [s for part in encoded for s in part.segments], np.concatenate([part.readout for part in encoded]),
        )
        return merged.subset(order)


class MoleculeTranslator(TagLLMGenerator):
    """Translation between molecular languages: SMILES, SELFIES, InChI and molecular formulas.

    The prompt is Tag-LLM's translation template with a domain tag per language,
    ``Input: <SMILES> {text} Output: <SELFIES> <Translate>``; the ``<Translate>`` function tag is
    trained, the language tags come from stage 1 (:func:`chemtag.protocol.pretrain_domain_tag`,
    ``domain_tags``). ``X`` is a list of texts in ``source`` (or a DataFrame with a ``text``
    column); a DataFrame may also give each row its own direction in ``source`` and ``target``
    columns, so that one ``<Translate>`` tag learns several directions and can be asked for
    directions it never saw (zero-shot). Targets, predictions and :meth:`score` use each language's
    canonical form (:mod:`chemtag.representations`). A formula can be a target only.

    Parameters
    ----------
    source, target : str
        The direction of rows that do not name theirs: one of ``"SMILES"``, ``"SELFIES"``,
        ``"InChI"``, ``"Formula"`` (target only).
    languages : list of str, optional
        Languages whose tags the model holds, so that it can translate from and into them later;
        by default the languages of the fitted directions.
    language_tags : bool
        Write each language as its domain tag (Tag-LLM). False writes its name as a word instead,
        ``Input: SMILES {text} Output: SELFIES <Translate>``, so that ``<Translate>`` alone is trained:
        prompt tuning, the baseline without domain tags.

    Other parameters are those of :class:`TagLLMGenerator`; ``domains``, ``template`` and
    ``output_domain`` follow from the directions and must stay unset; ``columns={"text": ...}``
    names another text column.
    """

    __init__ = derived_init(TagLLMGenerator, function_tag="Translate", output_domain=None, source="SMILES",
                       target="SELFIES", languages=None, language_tags=True)

    def _check_output_params(self) -> None:
        if self.domains is not None or self.template is not None or self.output_domain is not None:
            raise ValueError("MoleculeTranslator writes its prompts from source and target: leave domains, template "
                             "and output_domain unset.")
        self._check_direction(self.source, self.target)
        for language in self.languages or ():
            self._check_direction(language, None)
        if self.languages and not self.language_tags:
            raise ValueError("languages names the language tags to hold; with language_tags=False there are none.")

    @staticmethod
    def _check_direction(source: str, target: str | None) -> None:
        """Refuse unknown languages, formulas as a source and a language translated into itself."""
        for language in (source, target):
            if language is not None and language not in LANGUAGES:
                raise ValueError(f"Unknown molecular language {language!r}; choose from {list(LANGUAGES)}.")
        if target is not None and source not in MOLECULE_LANGUAGES:
            raise ValueError(f"Cannot translate from {source}: a formula does not determine a molecule.")
        if source == target:
            raise ValueError(f"Source and target are both {source}.")

    def direction_template(self, source: str, target: str) -> str:
        """The prompt of one direction, e.g. ``Input: <InChI> {text} Output: <SMILES> <Translate>``."""
        if not self.language_tags:
            return f"Input: {source} {{text}} Output: {target} <{self.function_tag}>"
        return f"Input: <{source}> {{text}} Output: <{target}> <{self.function_tag}>"

    def _read_rows(self, X, fitting: bool) -> _Rows:
        frame = as_frame(X, ["text"])
        fresh = fitting and not (self.warm_start and hasattr(self, "tags_"))
        if fresh:
            self._record_input_shape(X, frame)
            self.fields_ = {"text": self.source}
            self.template_ = self.direction_template(self.source, self.target)
        column = (self.columns or {}).get("text", "text")
        if column not in frame.columns:
            raise ValueError(f"X has no column {column!r} of texts to translate; its columns are "
                             f"{list(frame.columns)}.")
        n = len(frame)
        sources = frame["source"].tolist() if "source" in frame.columns else [self.source] * n
        targets = frame["target"].tolist() if "target" in frame.columns else [self.target] * n
        for direction in dict.fromkeys(zip(sources, targets)):
            self._check_direction(*direction)
        if not fresh and self.language_tags:
            self._check_languages(set(sources) | set(targets))
        raw = frame[column].tolist()
        texts = [get_domain(source).normalise(value) for source, value in zip(sources, raw)]
        invalid = np.array([text is None for text in texts], dtype=bool)
        if invalid.any():
            bad = np.flatnonzero(invalid).tolist()
            message = report_invalid("molecules", column, [raw[i] for i in bad], bad, n,
                                     "They are not valid in their source language. ")
            if self.on_invalid == "raise":
                raise InvalidInputError(message, bad)
            logger.warning(message)
        return _Rows([self.direction_template(s, t) for s, t in zip(sources, targets)],
                     [{"text": text or ""} for text in texts], targets, invalid)

    def _check_languages(self, languages: set[str]) -> None:
        known = [name for name, tag in self.tags_.items() if tag.kind == "domain"]
        missing = sorted(languages - set(known))
        if missing:
            raise ValueError(f"This translator holds tags for {known} only, not {missing}; fit it with "
                             f"languages={sorted(set(known) | set(missing))} to translate from or into them.")

    def _domain_tag_names(self, rows: _Rows) -> list[str]:
        used = super()._domain_tag_names(rows)
        if not self.languages:
            return used
        missing = sorted(set(used) - set(self.languages))
        if missing:
            raise ValueError(f"The fitted directions use {missing}, which languages={list(self.languages)} lacks.")
        return list(self.languages)
