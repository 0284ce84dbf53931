"""Generated tables in the docs: a benchmark rewrites the text between its two markers in place
(appending the markers if the document has none yet), leaving the rest of the file as it was."""

from __future__ import annotations

from pathlib import Path


def write_between(doc: Path, begin: str, end: str, body: str) -> None:
    text = doc.read_text()
    if begin not in text:
        text += f"\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    doc.write_text(f"{head}{begin}\n{body}\n{end}{tail}")
