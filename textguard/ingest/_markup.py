"""Text out of markup: HTML and XHTML (and Markdown, rendered to HTML first).

Only what a reader sees is kept: scripts, styles, templates and comments go, block elements
end a paragraph ("\\n\\n" as in the corpus files), `<br>` a line. The stored text is the text as
extracted, so a match's offsets point into it.
"""

from __future__ import annotations

import re

import lxml.html
from lxml import etree
from markdown_it import MarkdownIt

from textguard.ingest._text import EncodingError, decode_text

__all__ = ["decode_markup", "html_text", "html_title", "markdown_text"]

_DECLARED = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_-]+)""", re.IGNORECASE)
_XML_DECLARATION = re.compile(r"^\s*<\?xml[^>]*\?>")

_DROPPED = ("script", "style", "template", "noscript", "head", "svg", "math")
_BLOCKS = frozenset({"address", "article", "aside", "blockquote", "dd", "div", "dl", "dt", "figcaption",
                     "figure", "footer", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "main",
                     "nav", "ol", "p", "pre", "section", "table", "tr", "ul", "body", "html"})
_CELLS = frozenset({"td", "th"})


def decode_markup(data: bytes, encoding: str | None = None) -> tuple[str, str]:
    """An HTML or XHTML file's text and encoding: as forced, else as its <meta> declares (if that
    decodes it), else as detected."""
    declared = _DECLARED.search(data[:4096])
    if encoding is None and declared:
        try:
            return decode_text(data, declared.group(1).decode("ascii").lower())
        except EncodingError:
            pass  # declared wrongly, as happens: tell it from the bytes
    return decode_text(data, encoding)


def html_text(markup: str) -> str:
    """The visible text of an HTML or XHTML document, paragraphs separated by blank lines."""
    markup = _XML_DECLARATION.sub("", markup)  # lxml refuses a str that declares an encoding
    if not markup.strip():
        return ""
    root = lxml.html.document_fromstring(markup)
    pieces: list[str] = []
    _collect(root, pieces)
    text = "".join(pieces)
    text = re.sub(r"[ \t\r\f\v\u3000]*\n[ \t\r\f\v\u3000]*", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def html_title(markup: str) -> str:
    """The document's <title>, or "" if it has none."""
    markup = _XML_DECLARATION.sub("", markup)
    if not markup.strip():
        return ""
    found = lxml.html.document_fromstring(markup).find(".//title")
    return " ".join((found.text_content() if found is not None else "").split())


def markdown_text(source: str) -> str:
    """The text of a Markdown document, as its rendered HTML reads."""
    return html_text(MarkdownIt("commonmark").render(source))


def _collect(element: etree._Element, pieces: list[str]) -> None:
    tag = element.tag.lower() if isinstance(element.tag, str) else ""
    if tag in _DROPPED or not isinstance(element.tag, str):
        if element.tail:
            pieces.append(_squeeze(element.tail))
        return
    block = tag in _BLOCKS
    if block:
        pieces.append("\n\n")
    if tag == "br":
        pieces.append("\n")
    if element.text:
        pieces.append(element.text if tag == "pre" else _squeeze(element.text))
    for child in element:
        _collect(child, pieces)
    if block:
        pieces.append("\n\n")
    elif tag in _CELLS:
        pieces.append("\t")
    if element.tail:
        pieces.append(_squeeze(element.tail))


def _squeeze(text: str) -> str:
    """Markup whitespace reads as one space, and a line break between Chinese characters as
    nothing at all (a paragraph of Chinese wrapped in the source has no spaces)."""
    text = re.sub(r"(?<=[\u3000-\u9fff\uff00-\uffef])\s*\n\s*(?=[\u3000-\u9fff\uff00-\uffef])", "", text)
    return re.sub(r"\s+", " ", text)
