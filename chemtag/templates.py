"""Prompt templates in Tag-LLM's form and their encoding into token ids plus tag slots.

A template is literal text, input fields ``{name}`` and tags ``<Name>``, ending with the function tag::

    Input: The protein sequence is <Protein> {protein}. The SMILES of the drug is <SMILES> {smiles}. Output: The binding affinity is <BA>

A tag directly followed (across white space only) by a field forms a *domain segment*: the tag and the
field's text. With segment-isolated attention each segment sees only itself.

A *feature slot* ``<{name}>`` splices in ``p`` vectors computed from numeric features of the field's
value (e.g. a cell line's gene expression, see :class:`~chemtag.feature_tags.FeatureTag`)::

    ... The cell line is {Cell_Line_ID}. Output: The drug combination synergy is <{Cell_Line_ID}> <DC>
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from transformers import PreTrainedTokenizerBase

# A feature slot <{field}>, a tag <Name> or a field {name}; a field may name any column.
_TOKEN_PATTERN = re.compile(r"<\{([^{}<>]+)\}>|<([A-Za-z][\w.\-]*)>|\{([^{}<>]+)\}")


@dataclass(frozen=True)
class Text:
    """Literal prompt text."""

    text: str


@dataclass(frozen=True)
class TagSlot:
    """Where the ``p`` vectors of tag ``name`` are spliced in."""

    name: str


@dataclass(frozen=True)
class FeatureSlot:
    """Where the ``p`` feature vectors of the value of field ``name`` are spliced in."""

    name: str


@dataclass(frozen=True)
class Field:
    """An input value; ``prefix`` is the white space the template had before it, ``segment`` its
    1-based domain-segment number (0 when the field has no domain tag)."""

    name: str
    prefix: str = ""
    segment: int = 0


Part = Text | TagSlot | FeatureSlot | Field


@dataclass(frozen=True)
class Template:
    parts: tuple[Part, ...]
    source: str

    @classmethod
    def parse(cls, source: str) -> "Template":
        raw: list[Part] = []
        position = 0
        for match in _TOKEN_PATTERN.finditer(source):
            if match.start() > position:
                raw.append(Text(source[position:match.start()]))
            feature, tag, field = match.groups()
            raw.append(FeatureSlot(feature) if feature else TagSlot(tag) if tag else Field(field))
            position = match.end()
        if position < len(source):
            raw.append(Text(source[position:]))
        parts = _attach_fields_to_domain_tags(raw)
        template = cls(tuple(parts), source)
        template._check()
        return template

    @property
    def fields(self) -> tuple[str, ...]:
        """Names of the input fields, written as text or behind a feature slot, in order of first use."""
        return tuple(dict.fromkeys(p.name for p in self.parts if isinstance(p, (Field, FeatureSlot))))

    @property
    def feature_fields(self) -> tuple[str, ...]:
        """Fields whose values' feature vectors are spliced in at a feature slot."""
        return tuple(dict.fromkeys(p.name for p in self.parts if isinstance(p, FeatureSlot)))

    @property
    def tag_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p.name for p in self.parts if isinstance(p, TagSlot)))

    @property
    def function_tag(self) -> str:
        return self.parts[-1].name

    @property
    def domain_tags(self) -> dict[str, str]:
        """Field name -> the domain tag written right before it."""
        return {
            field.name: self.parts[i - 1].name
            for i, field in enumerate(self.parts)
            if isinstance(field, Field) and field.segment
        }

    @property
    def domain_segments(self) -> int:
        """How many fields stand right after a domain tag: the prompts' domain segments are ``1 .. n``."""
        return max((part.segment for part in self.parts if isinstance(part, Field)), default=0)

    def _check(self) -> None:
        if not self.parts or not isinstance(self.parts[-1], TagSlot):
            raise ValueError(f"A template must end with its function tag, e.g. '... <QED>'; got {self.source!r}.")
        if self.function_tag in self.domain_tags.values():
            raise ValueError(f"The function tag <{self.function_tag}> is also used as a domain tag in {self.source!r}.")
        text_fields = [p.name for p in self.parts if isinstance(p, Field)]
        duplicated = {f for f in text_fields if text_fields.count(f) > 1}
        if duplicated:
            raise ValueError(f"Fields {sorted(duplicated)} appear more than once in {self.source!r}.")


def with_feature_slot(source: str, field: str) -> str:
    """``source`` with the feature slot ``<{field}>`` right before its function tag, unless it has one."""
    template = Template.parse(source)
    if field in template.feature_fields:
        return source
    end = source.rindex(f"<{template.function_tag}>")
    return f"{source[:end]}<{{{field}}}> {source[end:]}"


def with_domain_tag(source: str, field: str, tag: str) -> str:
    """``source`` with ``<tag>`` as the domain tag right before ``{field}``, in place of the one there."""
    current = Template.parse(source).domain_tags.get(field)
    if current is None:
        raise ValueError(f"The template {source!r} has no domain tag right before {{{field}}}.")
    pattern = re.compile(rf"<{re.escape(current)}>(\s*)\{{{re.escape(field)}\}}")
    return pattern.sub(lambda match: f"<{tag}>{match.group(1)}{{{field}}}", source, count=1)


def _attach_fields_to_domain_tags(raw: list[Part]) -> list[Part]:
    """Move white space before a field into the field, drop it before a tag, and number domain segments."""
    parts: list[Part] = []
    segments = 0
    for part in raw:
        if isinstance(part, Field):
            prefix = ""
            if parts and isinstance(parts[-1], Text) and parts[-1].text.isspace():
                prefix = parts.pop().text
            elif parts and isinstance(parts[-1], Text):
                stripped = parts[-1].text.rstrip()
                prefix = parts[-1].text[len(stripped):]
                parts[-1] = Text(stripped)
            segment = 0
            if parts and isinstance(parts[-1], TagSlot):
                segments += 1
                segment = segments
            part = Field(part.name, prefix, segment)
        elif isinstance(part, (TagSlot, FeatureSlot)) and parts and isinstance(parts[-1], Text):
            # A tag is not a word: the space before it would be a lone, unnatural token.
            stripped = parts.pop().text.rstrip()
            if stripped:
                parts.append(Text(stripped))
        parts.append(part)
    return parts


@dataclass
class EncodedPrompts:
    """Token-level encoding of ``n`` prompts, one ragged row each.

    ``input_ids[i]`` ``(L_i,)`` token ids (tag slots hold the pad id); ``tag_slots[i]`` ``(L_i,)`` the row of
    the stacked tag table spliced at each position, -1 for vocabulary tokens (rows from ``n_tags * p`` on
    are feature vectors: row ``n_tags * p + e * p + k`` is vector ``k`` of entity ``e``);
    ``segments[i]`` ``(L_i,)`` 0 for shared context, ``k`` for the k-th domain segment; ``readout[i]`` the
    position of the last function-tag vector, whose final hidden state feeds the head; ``spans[i]``
    ``(L_i,)`` the span of the template each token is in: span ``k`` ends with the value of the
    template's field ``k`` (the text after the last field joins the last span), or ``spans=None`` for
    prompts not encoded from a template.
    """

    input_ids: list[np.ndarray]
    tag_slots: list[np.ndarray]
    segments: list[np.ndarray]
    readout: np.ndarray
    spans: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(ids) for ids in self.input_ids), dtype=np.int64, count=len(self.input_ids))

    def subset(self, indices: Sequence[int]) -> "EncodedPrompts":
        return EncodedPrompts(
            [self.input_ids[i] for i in indices], [self.tag_slots[i] for i in indices],
            [self.segments[i] for i in indices], self.readout[np.asarray(indices, dtype=np.int64)],
            None if self.spans is None else [self.spans[i] for i in indices],
        )


class TemplateEncoder:
    """Encodes field values through a template for one tokenizer and tag layout.

    ``tag_order`` names the tags in the order of the model's stacked tag table; each tag occupies
    ``tag_length`` consecutive rows. ``entities`` names, in order, the values whose feature vectors
    follow the tags (see :class:`EncodedPrompts`); a feature slot's field must hold one of them. Each
    distinct field value is tokenized once.
    """

    def __init__(self, template: Template, tokenizer: PreTrainedTokenizerBase, tag_order: Sequence[str], tag_length: int,
                 entities: Sequence[str] = ()):
        missing = set(template.tag_names) - set(tag_order)
        if missing:
            raise ValueError(f"No tags for {sorted(missing)} in the model's tag table {list(tag_order)}.")
        if template.feature_fields and not entities:
            raise ValueError(f"The template's feature slots {[f'<{{{f}}}>' for f in template.feature_fields]} need "
                             f"a model with feature vectors; this one has none.")
        self.template = template
        self.tokenizer = tokenizer
        self.tag_length = tag_length
        self._tag_rows = {name: i * tag_length + np.arange(tag_length) for i, name in enumerate(tag_order)}
        self._first_feature_row = len(tag_order) * tag_length
        self._entities = {entity: i for i, entity in enumerate(entities)}
        self._pad_id = tokenizer.pad_token_id
        self._start_ids = list(tokenizer("", add_special_tokens=True).input_ids)
        self._text_ids = {p.text: self._tokenize([p.text])[0] for p in template.parts if isinstance(p, Text)}

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=False).input_ids

    def encode(self, values: Mapping[str, Sequence[str]]) -> EncodedPrompts:
        """Encode ``values`` (field name -> ``n`` strings) into ``n`` prompts."""
        missing = set(self.template.fields) - set(values)
        if missing:
            raise ValueError(f"No values given for template fields {sorted(missing)}.")
        counts = {name: len(values[name]) for name in self.template.fields}
        if len(set(counts.values())) > 1:
            raise ValueError(f"Every template field needs one value per prompt; got {counts} values.")
        n = next(iter(counts.values()), 1)
        field_ids = {}
        for field in (p for p in self.template.parts if isinstance(p, Field)):
            texts = [field.prefix + str(v) for v in values[field.name]]
            unique = list(dict.fromkeys(texts))
            ids = dict(zip(unique, self._tokenize(unique)))
            field_ids[field.name] = [ids[t] for t in texts]
        feature_rows = {field: [self._feature_rows(v) for v in values[field]] for field in self.template.feature_fields}

        encoded = EncodedPrompts([], [], [], np.zeros(n, dtype=np.int64), [])
        start, last_span = len(self._start_ids), max(sum(isinstance(p, Field) for p in self.template.parts) - 1, 0)
        for row in range(n):
            ids, slots, segments, spans = list(self._start_ids), [-1] * start, [0] * start, [0] * start
            span = 0
            for index, part in enumerate(self.template.parts):
                piece, piece_slots, segment = self._part_tokens(index, field_ids, feature_rows, row)
                ids.extend(piece)
                slots.extend(piece_slots)
                segments.extend([segment] * len(piece))
                spans.extend([min(span, last_span)] * len(piece))
                span += isinstance(part, Field)
            encoded.input_ids.append(np.asarray(ids, dtype=np.int64))
            encoded.tag_slots.append(np.asarray(slots, dtype=np.int64))
            encoded.segments.append(np.asarray(segments, dtype=np.int64))
            encoded.spans.append(np.asarray(spans, dtype=np.int64))
            encoded.readout[row] = len(ids) - 1
        return encoded

    def _feature_rows(self, entity: str) -> list[int]:
        """Rows of the feature vectors of ``entity``, after the tag table's rows."""
        if entity not in self._entities:
            raise ValueError(f"No feature vectors for {entity!r}; the model has them for {len(self._entities)} values.")
        first = self._first_feature_row + self._entities[entity] * self.tag_length
        return list(range(first, first + self.tag_length))

    def _part_tokens(self, index: int, field_ids: dict, feature_rows: dict,
                     row: int) -> tuple[list[int], list[int], int]:
        """Token ids, tag-table rows (-1 for vocabulary tokens) and segment of template part ``index``."""
        parts = self.template.parts
        part = parts[index]
        if isinstance(part, Text):
            ids = self._text_ids[part.text]
            return ids, [-1] * len(ids), 0
        if isinstance(part, Field):
            ids = field_ids[part.name][row]
            return ids, [-1] * len(ids), part.segment
        if isinstance(part, FeatureSlot):
            rows = feature_rows[part.name][row]
            return [self._pad_id] * len(rows), rows, 0
        following = parts[index + 1] if index + 1 < len(parts) else None
        rows = self._tag_rows[part.name].tolist()
        return [self._pad_id] * len(rows), rows, following.segment if isinstance(following, Field) else 0
