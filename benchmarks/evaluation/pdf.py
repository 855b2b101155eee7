"""Writing small PDFs with a real text layer (for evaluation documents and tests): one string
per page, Helvetica text operators, via pypdf."""

from __future__ import annotations

import io


def text_pdf(pages: list[str], password: str | None = None, font_size: int = 12) -> bytes:
    """A PDF with a real text layer, one string per page (lines split on newlines)."""
    from pypdf import PdfWriter
    from pypdf.generic import DictionaryObject, NameObject, StreamObject

    writer = PdfWriter()
    top, leading = (750, 12) if font_size <= 10 else (720, font_size + 2)
    for text in pages:
        page = writer.add_blank_page(612, 792)
        font = DictionaryObject(
            {
                NameObject("/Type"): NameObject("/Font"),
                NameObject("/Subtype"): NameObject("/Type1"),
                NameObject("/BaseFont"): NameObject("/Helvetica"),
            }
        )
        page[NameObject("/Resources")] = DictionaryObject(
            {NameObject("/Font"): DictionaryObject({NameObject("/F1"): writer._add_object(font)})}
        )
        escaped = [line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") for line in text.split("\n")]
        content = StreamObject()
        margin = 50 if font_size <= 10 else 72
        content.set_data(
            (
                f"BT /F1 {font_size} Tf {margin} {top} Td {leading} TL "
                + " ".join(f"({line}) '" for line in escaped)
                + " ET"
            ).encode("latin-1")
        )
        page[NameObject("/Contents")] = writer._add_object(content)
    if password:
        writer.encrypt(password)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()
