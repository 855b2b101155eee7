"""Question time: one answer pipeline for every door (Python, CLI, UI, API, MCP).

* :mod:`.passages` — a document's passages and their BM25 index (SQLite FTS5);
* :mod:`.retrieval` — which passages a question gets, from one document or several;
* :mod:`.pipeline` — :class:`DocumentChat`: retrieve, read (passages and/or the HOMER
  cache), answer, cite;
* :mod:`.results` — its typed :class:`Answer`, :class:`Source` and :class:`TurnReport`;
* :mod:`.document` — :func:`open_document`, the notebook's three-line quickstart.
"""

from .document import OpenDocument, open_document
from .passages import Passage, PassageIndex
from .pipeline import AnswerError, AnswerSettings, DocumentChat
from .results import Answer, Source, TurnReport
from .retrieval import DocumentText

__all__ = [
    "Answer",
    "AnswerError",
    "AnswerSettings",
    "DocumentChat",
    "DocumentText",
    "OpenDocument",
    "Passage",
    "PassageIndex",
    "Source",
    "TurnReport",
    "open_document",
]
