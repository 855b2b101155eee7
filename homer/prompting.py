"""How a document and its questions are laid out around the model's chat template.

A :class:`DocumentPrompt` renders the conversation with a placeholder for the document and
splits it into prefix (system + start of the user turn), the document, and a
question-agnostic suffix (method §1), so one cache serves any later question. Later turns
are rendered with the same template and only the new text is appended to the cache."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

DOC = "\u2063<<HOMER-DOCUMENT>>\u2063"
QUESTION = "\u2063<<HOMER-QUESTION>>\u2063"


@dataclass(frozen=True)
class DocumentPrompt:
    """style: "chat" (the tokenizer's chat template) or "completion" (plain text)."""

    style: str = "chat"
    system: str | None = None
    intro: str = "Here is a document.\n\n"
    instruction: str = "\n\nThat is the end of the document. Answer the question below using the document.\n\n"

    def __post_init__(self):
        if self.style not in ("chat", "completion"):
            raise ValueError("prompt style must be 'chat' or 'completion'")

    @property
    def version(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:12]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "DocumentPrompt":
        return cls(**json.loads(text))

    def render(self, tokenizer, turns: list[tuple[str, str]], question: str, document: str = DOC) -> str:
        """The whole conversation as text: earlier (question, answer) turns, then ``question``
        awaiting its answer."""
        questions = [q for q, _ in turns] + [question]
        first = self.intro + document + self.instruction + questions[0]
        if self.style == "completion":
            text = first
            for (_, answer), nxt in zip(turns, questions[1:]):
                text += f"\nAnswer:{answer}\n\nQuestion: {nxt}"
            return text + "\nAnswer:"
        messages = [{"role": "system", "content": self.system}] if self.system else []
        messages.append({"role": "user", "content": first})
        for (_, answer), nxt in zip(turns, questions[1:]):
            messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": nxt}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def split(self, tokenizer, question: str | None = None) -> tuple[str, str, str]:
        """(prefix, suffix, tail): prefix + document + suffix is the cached prompt; with no
        ``question`` the suffix is question-agnostic and ``tail`` is what follows a later
        question (end of turn, assistant header). With a question, the suffix holds it."""
        text = self.render(tokenizer, [], QUESTION)
        if text.count(DOC) != 1 or text.count(QUESTION) != 1:
            raise ValueError("the chat template does not keep the document and question verbatim")
        prefix, rest = text.split(DOC)
        suffix, tail = rest.split(QUESTION)
        if question is not None:
            return prefix, suffix + question + tail, ""
        return prefix, suffix, tail


def default_prompt(tokenizer, style: str | None = None) -> DocumentPrompt:
    """Chat layout when the tokenizer has a chat template, completion layout otherwise."""
    if style is None:
        style = "chat" if getattr(tokenizer, "chat_template", None) else "completion"
    return DocumentPrompt(style=style)
