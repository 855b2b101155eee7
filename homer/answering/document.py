"""A document opened for questions in Python — the three-line quickstart::

    from homer import open_document
    book = open_document("book.pdf").read()   # its text, places and passages; then its HOMER cache
    print(book.ask("Who counted the boats?"))  # the answer, with its sources under it

It answers exactly as the app does (:class:`homer.answering.DocumentChat`, the same passage
ranking, the same settings): a specific question from its passages at once — before
:meth:`OpenDocument.read` too — and a whole-document question from the HOMER cache.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

from .pipeline import Answer, AnswerSettings, DocumentChat
from .retrieval import DocumentText


class OpenDocument:
    """A document's text with its places and passage index, the model that answers, and its
    HOMER cache once :meth:`read` (or :meth:`load_cache`) gave one."""

    def __init__(
        self,
        text: str,
        model,
        tokenizer,
        name: str = "document",
        page_starts: list[int] | None = None,
        labels: list[str] | None = None,
        document_id: str | None = None,
        settings: AnswerSettings | None = None,
    ):
        self.text, self.model, self.tokenizer = text, model, tokenizer
        self.document = DocumentText.of_text(text, name, page_starts, labels, document_id)
        self.settings = settings or AnswerSettings()
        self.cache = None
        self._chat: DocumentChat | None = None

    @property
    def name(self) -> str:
        return self.document.name

    def read(self, config=None, progress=None) -> "OpenDocument":
        """Read the whole document into its HOMER cache (hierarchical context merging, Song et
        al., ICLR 2024), for questions about the document as a whole; returns ``self``."""
        from ..document import build_document_cache

        self.cache = build_document_cache(
            self.model,
            self.tokenizer,
            self.text,
            config,
            progress=progress,
            metadata={"document_id": self.document.id, "source": self.name},
        )
        self._chat = None
        return self

    def load_cache(self, path) -> "OpenDocument":
        """Use a cache saved before (``cache.save(path)``, or the app's); it must be this model's."""
        from ..cache import HomerCache

        self.cache = HomerCache.load(path, model=self.model)
        self._chat = None
        return self

    def chat(self) -> DocumentChat:
        """A new conversation with the document (its own turns)."""
        return DocumentChat(self.model, self.tokenizer, self.document, self.cache, self.settings)

    def stream(self, question: str, **options) -> Iterator[Answer]:
        """Stream the answer (in this document's default conversation)."""
        if self._chat is None:
            self._chat = self.chat()
        yield from self._chat.stream(question, **options)

    def ask(self, question: str, **options) -> Answer:
        """The answer to ``question`` (in this document's default conversation: earlier
        questions and answers stay in the window)."""
        answer = None
        for answer in self.stream(question, **options):
            pass
        return answer


def open_document(
    source: str | Path | bytes,
    model=None,
    tokenizer=None,
    name: str | None = None,
    settings: AnswerSettings | None = None,
) -> OpenDocument:
    """Open a PDF, EPUB, DOCX, HTML, TXT or Markdown file (a path, or its bytes with ``name``)
    or a text (a string that is not a file's path) for questions. ``model``: a loaded model
    (with its ``tokenizer``), a Hugging Face id or folder, or None for the embedded default."""
    from ..reading.sources import read_document

    if isinstance(source, bytes) or (isinstance(source, (str, Path)) and _is_file(source)):
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        file_name = name or (Path(source).name if not isinstance(source, bytes) else "document.txt")
        read = read_document(file_name, data=data)
        text, starts, labels, doc_id = read.text, read.page_starts, read.labels, hashlib.sha256(data).hexdigest()
    else:
        text, starts, labels, doc_id, file_name = str(source), None, None, None, name or "document"
    if model is None or isinstance(model, (str, Path)):
        from ..models import load_model

        model, tokenizer = load_model(None if model is None else str(model))
    elif tokenizer is None:
        raise ValueError("a loaded model needs its tokenizer")
    return OpenDocument(text, model, tokenizer, file_name, starts, labels, doc_id, settings)


def _is_file(source: str | Path) -> bool:
    if isinstance(source, str) and ("\n" in source or len(source) > 4096):
        return False
    try:
        return Path(source).is_file()
    except OSError:
        return False
