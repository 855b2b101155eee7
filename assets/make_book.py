"""Regenerate the sample book ``assets/genesis-exodus-leviticus-kjv.txt`` (Genesis, Exodus
and Leviticus, King James Version) laid out like a printed book: a title page, each book's
traditional title, "Chapter N" headings and one numbered verse per line.

Only needed to regenerate the file, which is committed. It reads the text with the
``bible`` program of the Debian package ``bible-kjv`` (``apt-get install bible-kjv``):

    python assets/make_book.py                      # writes assets/genesis-exodus-leviticus-kjv.txt
    python assets/make_book.py --books gen exo -o /tmp/two-books.txt
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUTPUT = HERE / "genesis-exodus-leviticus-kjv.txt"

# abbreviation understood by `bible` -> (abbreviation `bible` prints, title in the 1611 printing)
BOOKS = {
    "gen": ("Ge", "The First Book of Moses, called Genesis"),
    "exo": ("Exo", "The Second Book of Moses, called Exodus"),
    "lev": ("Lev", "The Third Book of Moses, called Leviticus"),
    "num": ("Nu", "The Fourth Book of Moses, called Numbers"),
    "deu": ("De", "The Fifth Book of Moses, called Deuteronomy"),
}
VERSE = re.compile(r"^(?P<book>[1-3]?[A-Za-z]+)(?P<chapter>\d+):(?P<verse>\d+) (?P<text>.*)$")


def read_book(book: str) -> list[tuple[int, int, str]]:
    """``(chapter, verse, text)`` of every verse of one book, from ``bible``."""
    printed, _ = BOOKS[book]
    # "Rev99:99"-style references are clamped to the last verse, so 999:999 is the book's end
    run = subprocess.run(["bible", "-f", f"{book}1:1-{book}999:999"], capture_output=True, text=True, check=True)
    verses = []
    for line in run.stdout.splitlines():
        match = VERSE.match(line.strip())
        if not match:
            if line.strip():
                raise ValueError(f"unexpected line from bible: {line!r}")
            continue
        if match["book"] != printed:
            raise ValueError(f"expected {printed}, got {match['book']} in {line!r}")
        verses.append((int(match["chapter"]), int(match["verse"]), match["text"].strip()))
    return verses


def make_book(books: list[str]) -> str:
    names = [BOOKS[b][1].rsplit(" ", 1)[-1] for b in books]  # "Genesis", "Exodus", ...
    names = ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]
    lines = ["THE HOLY BIBLE", "", f"The Books of Moses: {names}", "",
             "Authorized King James Version (1611)", ""]
    for book in books:
        lines += ["", "", BOOKS[book][1].upper(), ""]
        chapter = None
        for number, verse, text in read_book(book):
            if number != chapter:
                chapter = number
                lines += ["", f"Chapter {number}", ""]
            lines.append(f"{verse} {text}")
    return "\n".join(lines).strip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--books", nargs="+", default=["gen", "exo", "lev"], choices=list(BOOKS))
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    if shutil.which("bible") is None:
        print("needs the `bible` program: apt-get install bible-kjv", file=sys.stderr)
        return 1
    text = make_book(args.books)
    args.output.write_text(text, encoding="utf-8")
    print(f"{args.output}: {len(text)} characters, {text.count(chr(10))} lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
