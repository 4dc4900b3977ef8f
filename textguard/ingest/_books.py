"""Publishers' files: EPUB (a document per chapter, in reading order), DOCX and PDF.

An e-book's chapters are separate documents, so that a match names the chapter; the book's
title and author come from its metadata, each chapter's title from the table of contents.
A PDF needs a text layer: a page without one (a scan) is reported, and a file without any is
not indexed at all, since an empty document would look protected and match nothing.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from textguard.ingest._markup import decode_markup, html_text, html_title

__all__ = ["docx_document", "epub_chapters", "pdf_pages"]


def epub_chapters(path: Path) -> tuple[dict[str, str], Iterator[tuple[str, str, str | Exception]]]:
    """The book's metadata (title, author) and its chapters as (number, title, text), in spine
    order; pages without text (covers, navigation) are left out, and a chapter that cannot be
    read comes as (file name, "", the error), so that the rest of the book is still read."""
    import ebooklib
    from ebooklib import epub

    with warnings.catch_warnings():  # ebooklib warns about options it will change some day
        warnings.simplefilter("ignore")
        book = epub.read_epub(str(path), options={"ignore_ncx": True})
    meta = {"title": _first(book.get_metadata("DC", "title")), "author": _first(book.get_metadata("DC", "creator"))}
    titles = dict(_toc_titles(book.toc))

    def chapters() -> Iterator[tuple[str, str, str | Exception]]:
        number = 0
        for idref, _ in book.spine:
            item = book.get_item_with_id(idref)
            if item is None or item.get_type() != ebooklib.ITEM_DOCUMENT or isinstance(item, epub.EpubNav):
                continue
            try:
                markup, _ = decode_markup(item.get_content())
                text = html_text(markup)
            except Exception as exc:  # lxml's and the decoder's own errors: this chapter only
                yield item.get_name(), "", exc
                continue
            if not text:
                continue
            number += 1
            title = titles.get(item.get_name()) or html_title(markup) or f"{meta['title'] or path.stem} {number}"
            yield f"{number:03d}", title, text

    return meta, chapters()


def docx_document(path: Path) -> tuple[dict[str, str], str]:
    """A Word document's core properties (title, author) and its paragraphs' text."""
    import docx

    document = docx.Document(str(path))
    properties = document.core_properties
    text = "\n\n".join(p.text.strip() for p in document.paragraphs if p.text.strip())
    return {"title": properties.title or "", "author": properties.author or ""}, text


def pdf_pages(path: Path) -> tuple[dict[str, str], list[str]]:
    """A PDF's metadata (title, author) and the text of each page ("" where a page has none)."""
    try:
        from pypdf import PdfReader
    except ImportError as exc:
        raise ImportError("reading PDF needs pypdf: pip install 'textguard[pdf]'") from exc
    reader = PdfReader(str(path))
    if reader.is_encrypted and not reader.decrypt(""):
        raise ValueError("the PDF is encrypted")
    info: Any = reader.metadata or {}
    meta = {"title": str(info.get("/Title") or ""), "author": str(info.get("/Author") or "")}
    return meta, [(page.extract_text() or "").strip() for page in reader.pages]


def _first(values: list[tuple[str, Any]]) -> str:
    return str(values[0][0]).strip() if values else ""


def _toc_titles(toc: Any) -> Iterator[tuple[str, str]]:
    """(file name, title) of every table-of-contents entry, nested sections included."""
    for entry in toc:
        if isinstance(entry, tuple):  # (section, children)
            section, children = entry
            yield from _toc_titles([section])
            yield from _toc_titles(children)
        elif getattr(entry, "href", None) and getattr(entry, "title", None):
            yield entry.href.split("#", 1)[0], entry.title
        elif getattr(entry, "file_name", None) and getattr(entry, "title", None):
            yield entry.file_name, entry.title
