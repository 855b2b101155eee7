"""Document reading: a file in, its plain text and the places in it out.

* :mod:`.sources` — read a file of any supported kind (text, Markdown, PDF, EPUB, DOCX, HTML)
  into text, with bounds on every input;
* :mod:`.locations` — :class:`~.locations.LocationMap`: which page or section a character is in;
* :mod:`.source_document` — a document's text and places together;
* :mod:`.formats` — one module per format, OCR of scanned pages, page rendering with a deadline,
  and the one bounded zip reader (EPUB, DOCX and bundles).

Nothing here touches a model: the method (:mod:`homer`) reads the text this package produces.
"""
