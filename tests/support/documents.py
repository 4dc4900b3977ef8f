"""Publishers' files written with the real library of each format (ebooklib, python-docx,
reportlab), for the tests and benchmarks of reading corpora."""

from __future__ import annotations

from pathlib import Path

import docx
from ebooklib import epub
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.pdfgen import canvas

_LINE_CHARS = 40
_PAGE_LINES = 55


def write_epub(path: Path, title: str, author: str, chapters: list[tuple[str, str]]) -> None:
    """An EPUB of (heading, text) chapters, each with a style and a script a reader never sees."""
    book = epub.EpubBook()
    book.set_identifier(path.stem)
    book.set_title(title)
    book.set_language("zh")
    book.add_author(author)
    items = []
    for number, (heading, text) in enumerate(chapters, start=1):
        item = epub.EpubHtml(title=heading, file_name=f"c{number}.xhtml", lang="zh")
        paragraphs = "".join(f"<p>{p}</p>" for p in text.split("\n\n"))
        item.content = f"<h1>{heading}</h1><style>p {{margin: 0}}</style>{paragraphs}<script>var x = 1;</script>"
        book.add_item(item)
        items.append(item)
    book.toc = tuple(items)
    book.add_item(epub.EpubNcx())
    book.add_item(epub.EpubNav())
    book.spine = ["nav", *items]
    epub.write_epub(str(path), book)


def write_docx(path: Path, title: str, author: str, text: str) -> None:
    document = docx.Document()
    document.core_properties.title = title
    document.core_properties.author = author
    for paragraph in text.split("\n\n"):
        document.add_paragraph(paragraph)
    document.save(str(path))


def write_pdf(path: Path, title: str, author: str, text: str | None) -> None:
    """A PDF with Chinese text (a built-in CID font: no font file needed), or a page with only
    a picture on it, as a scan has."""
    pdfmetrics.registerFont(UnicodeCIDFont("STSong-Light"))
    page = canvas.Canvas(str(path))
    page.setTitle(title)
    page.setAuthor(author)
    if text is None:
        page.rect(50, 50, 400, 600, fill=1)
    else:
        text = text.replace("\n", "")
        for line, start in enumerate(range(0, len(text), _LINE_CHARS)):
            if line % _PAGE_LINES == 0:
                if line:
                    page.showPage()
                page.setFont("STSong-Light", 10)
            page.drawString(40, 800 - 14 * (line % _PAGE_LINES), text[start:start + _LINE_CHARS])
    page.showPage()
    page.save()
