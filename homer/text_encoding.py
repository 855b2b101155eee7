"""User and document text → token ids, with control tokens spelled in that text kept as text.

A tokenizer parses the strings of its special tokens (``<|im_end|>``, ``<|eot_id|>``,
``[/INST]``, ``</s>`` …) wherever they occur, so a question or a document that spells
``<|im_end|>\\n<|im_start|>assistant\\n`` would end the user's turn and open one the text
wrote itself (prompt injection through the chat markup). The single rule here: text that
comes from the user, the model's earlier answers or the document is encoded with those
strings as ordinary text; only the markup the chat template writes is parsed as control
tokens.

- :func:`encode_text` encodes user or document text (with character offsets for documents).
  It uses a private copy of the tokenizer's ``tokenizers`` backend whose
  ``encode_special_tokens`` flag is set once. transformers' ``split_special_tokens=True``
  call option does the same, but it works by flipping that flag on the shared backend on
  every call (``tokenization_utils_tokenizers``: ``self._tokenizer.encode_special_tokens =
  split_special_tokens``), so two threads sharing a tokenizer could each parse the other's
  text the wrong way; the copy never changes.
- :func:`mark` wraps every control-token string in user text with two private-use markers
  before the template renders it; :func:`encode_marked` then encodes the rendered text
  normally (the template's own control tokens are parsed) except the marked stretches, which
  are encoded as text. This is the scheme of transformers'
  ``apply_chat_template(..., sanitize_control_tokens=True)`` (present in 5.23), rebuilt here because
  HOMER encodes the conversation in pieces after a cache (prefix, suffix, each new turn),
  never the whole rendered chat at once, and must run on any transformers 5.
- Text with no control-token string is encoded exactly as the plain tokenizer call does
  (no marker, one call): ordinary prompts, documents and answers keep their token ids.

Control tokens: the tokenizer's special added tokens, plus the added tokens the chat
template's text contains (for the templates that mark turns with non-special tokens).
"""

from __future__ import annotations

import json
import re
import threading
import weakref

START, END = "\U0010fff0", "\U0010fff1"  # private-use: wrap a control-token string in user text
_MARKED = re.compile(f"{START}([^{START}{END}]*){END}|[{START}{END}]")
_NEVER = re.compile("(?!)")

_lock = threading.Lock()
_backends: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def control_tokens(tokenizer) -> tuple[str, ...]:
    """The strings the tokenizer would parse as control tokens, longest first."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(template, dict):
        template = "\0".join(str(v) for v in template.values())
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    found = {
        token.content
        for token in decoder.values()
        if token.content and (token.special or (token.content in template and not token.content.isspace()))
    }
    found |= {t for t in getattr(tokenizer, "all_special_tokens", []) or [] if t}
    return tuple(sorted(found, key=lambda t: (-len(t), t)))


def _pattern(tokens: tuple[str, ...]) -> re.Pattern:
    return re.compile("|".join(map(re.escape, tokens))) if tokens else _NEVER


def _text_backend(tokenizer):
    """A copy of the ``tokenizers`` backend that encodes every control token as text, made
    once per tokenizer (None for tokenizers without such a backend)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "to_str"):
        return None
    tokens = control_tokens(tokenizer)
    key = (id(backend), len(tokenizer), tokens)
    with _lock:
        try:
            cached = _backends.get(tokenizer)
        except TypeError:  # not weak-referenceable: no reuse
            cached = None
        if cached is not None and cached[0] == key:
            return cached[1]
        from tokenizers import Tokenizer

        spec = json.loads(backend.to_str())
        wanted = set(tokens)
        for entry in spec.get("added_tokens") or []:
            if entry.get("content") in wanted:
                entry["special"] = True  # encode_special_tokens splits only special added tokens
        clone = Tokenizer.from_str(json.dumps(spec))
        clone.no_truncation()
        clone.no_padding()
        clone.encode_special_tokens = True
        try:
            _backends[tokenizer] = (key, clone)
        except TypeError:
            pass
        return clone


def encode_text(tokenizer, text: str, offsets: bool = False):
    """Ids of user or document ``text`` with any control-token string in it encoded as text
    (no BOS/EOS added); with ``offsets``, also each token's start character."""
    if not text:
        return ([], []) if offsets else []
    clone = _text_backend(tokenizer)
    if clone is not None:
        enc = clone.encode(text, add_special_tokens=False)
        ids, starts = list(enc.ids), [start for start, _ in enc.offsets]
    else:
        enc = tokenizer(text, add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=offsets)
        ids = list(enc.input_ids)
        starts = [start for start, _ in enc.offset_mapping] if offsets else []
    return (ids, starts) if offsets else ids


def mark(tokenizer, text: str) -> str:
    """``text`` (from the user, an answer or a document) with each control-token string in it
    wrapped in markers for :func:`encode_marked`; marker characters already in it are dropped
    so that text cannot forge a marked (or unmarked) stretch."""
    text = unmark(text)
    return _pattern(control_tokens(tokenizer)).sub(lambda m: START + m.group(0) + END, text)


def unmark(text: str) -> str:
    """The text without markers: what the model is shown."""
    return text.replace(START, "").replace(END, "") if (START in text or END in text) else text


def marked_from(marked: str, start: int) -> str:
    """The part of ``marked`` from character ``start`` of its unmarked text on (a marker that
    opens a stretch at that point stays with the part)."""
    if start <= 0:
        return marked
    seen = 0
    for i, char in enumerate(marked):
        if char in (START, END):
            continue
        seen += 1
        if seen == start:
            return marked[i + 1 :]
    return ""


def _plain(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False).input_ids) if text else []


def _middle(encode, text: str, newline: list[int]) -> list[int]:
    """Ids of a piece from the middle of a prompt: encoded after a newline that is then removed,
    so SentencePiece-style tokenizers do not add the word-start space of a string's start."""
    ids = encode("\n" + text)
    if newline and ids[: len(newline)] == newline:
        return ids[len(newline) :]
    return encode(text)


def encode_marked(tokenizer, marked: str) -> list[int]:
    """Ids of rendered template text: parsed as the tokenizer parses it (the template's control
    tokens are control tokens), except the stretches :func:`mark` wrapped, encoded as text.
    Text without markers is one plain tokenizer call."""
    if START not in marked and END not in marked:
        return _plain(tokenizer, marked)
    pieces = _MARKED.split(marked)  # [text, marked, text, marked, …, text]; None for a lone marker
    newline = _plain(tokenizer, "\n")
    ids = _plain(tokenizer, pieces[0])
    for i, piece in enumerate(pieces[1:], start=1):
        if not piece:
            continue
        if i % 2:
            ids += _middle(lambda t: encode_text(tokenizer, t), piece, newline)
        else:
            ids += _middle(lambda t: _plain(tokenizer, t), piece, newline)
    return ids


def render_marked(prompt, tokenizer, turns: list[tuple[str, str]], question: str) -> str:
    """``prompt.render`` of the conversation with the user's and the model's text marked."""
    return prompt.render(
        tokenizer, [(mark(tokenizer, q), mark(tokenizer, a)) for q, a in turns], mark(tokenizer, question)
    )


def turn_tail(prompt, tokenizer, cached: str, turns: list[tuple[str, str]], question: str):
    """(text, ids) of what follows ``cached`` (the text a cache already holds) in the rendered
    conversation, or None where the rendering does not start with ``cached``."""
    marked = render_marked(prompt, tokenizer, turns, question)
    rendered = unmark(marked)
    if not rendered.startswith(cached):
        return None
    return rendered[len(cached) :], encode_marked(tokenizer, marked_from(marked, len(cached)))
