"""What in a chat request may be compressed, and what must go to the backend verbatim.

A message's text is cut into segments. A segment is either protected (sent as it is) or a
unit of context that the coarse stage may shorten or drop:

- retrieved documents (``Document [i](Title: T) text``, lost-in-the-middle's and most RAG
  templates' shape; also ``<document>...</document>``) in the system message or in any user
  message, the last one included;
- the paragraphs of earlier turns (user and assistant messages before the last user message).

Always protected: the system prompt's own text (its instructions), the last user message's own
text (the question), fenced code blocks, paragraphs that parse as JSON, tool messages, tool
definitions and tool calls (they are not message text: only ``content`` is ever read), and
content given as a list of parts (images, audio) rather than a string."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

_FENCE = re.compile(r"^(```|~~~)[^\n]*\n.*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
_DOC_START = re.compile(r"^[ \t]*(?:Document\s*\[\d+\]|\[\d+\]\s*\(Title:)", re.MULTILINE)
_XML_DOC = re.compile(r"<document\b[^>]*>.*?</document>", re.DOTALL | re.IGNORECASE)
_BLANK = re.compile(r"\n[ \t]*\n")
_TITLE = re.compile(r"^[ \t]*(?:Document\s*)?\[\d+\]\s*\(Title:\s*(.*?)\)\s*", re.DOTALL)


@dataclass(slots=True)
class Segment:
    text: str
    unit: bool                   # True: context the coarse stage may shorten or drop
    kind: str = "text"           # "document", "paragraph", "code", "json", "text"
    header: str = ""             # a document's "Document [i](Title: T) " prefix, kept with it
    title: str = ""


@dataclass(slots=True)
class Part:
    """One message's content, cut into segments that join back to it exactly."""
    index: int
    role: str
    segments: list[Segment] = field(default_factory=list)


def _is_json(text: str) -> bool:
    s = text.strip()
    if not s or s[0] not in "[{":
        return False
    try:
        json.loads(s)
    except ValueError:
        return False
    return True


def _pieces(text: str, pattern: re.Pattern[str], kind: str) -> list[tuple[str, str | None]]:
    """``text`` cut into (piece, kind) where ``pattern`` matches, (piece, None) between."""
    out: list[tuple[str, str | None]] = []
    pos = 0
    for m in pattern.finditer(text):
        if m.start() > pos:
            out.append((text[pos:m.start()], None))
        out.append((m.group(0), kind))
        pos = m.end()
    if pos < len(text):
        out.append((text[pos:], None))
    return out


def _paragraphs(text: str) -> list[str]:
    """``text`` cut after each blank line; the pieces join back to ``text``."""
    out, pos = [], 0
    for m in _BLANK.finditer(text):
        out.append(text[pos:m.end()])
        pos = m.end()
    out.append(text[pos:])
    return [p for p in out if p]


def _documents(text: str) -> list[tuple[str, bool]]:
    """Plain text cut into (piece, is_document): a document runs from its ``Document [i]``
    line to the next one or to a blank line."""
    starts = [m.start() for m in _DOC_START.finditer(text)]
    if not starts:
        return [(text, False)]
    out: list[tuple[str, bool]] = []
    if starts[0] > 0:
        out.append((text[:starts[0]], False))
    for k, s in enumerate(starts):
        end = starts[k + 1] if k + 1 < len(starts) else len(text)
        chunk = text[s:end]
        blank = _BLANK.search(chunk)
        if blank and k + 1 == len(starts):
            out.append((chunk[:blank.start()], True))
            out.append((chunk[blank.start():], False))
        else:
            out.append((chunk, True))
    return out


def _document(text: str) -> Segment:
    m = _TITLE.match(text)
    if m is None:
        return Segment(text, True, "document")
    return Segment(text[m.end():], True, "document", header=text[:m.end()], title=m.group(1))


def split_content(text: str, *, paragraphs_are_units: bool) -> list[Segment]:
    """One message's text as segments (documents always units; other paragraphs units only
    when ``paragraphs_are_units``; code and JSON never)."""
    out: list[Segment] = []
    for piece, kind in _pieces(text, _FENCE, "code"):
        if kind == "code":
            out.append(Segment(piece, False, "code"))
            continue
        for sub, xml in _pieces(piece, _XML_DOC, "document"):
            if xml:
                out.append(Segment(sub, True, "document"))
                continue
            for chunk, is_doc in _documents(sub):
                if is_doc:
                    out.append(_document(chunk))
                    continue
                for para in _paragraphs(chunk):
                    if _is_json(para):
                        out.append(Segment(para, False, "json"))
                    elif paragraphs_are_units and para.strip():
                        out.append(Segment(para, True, "paragraph"))
                    else:
                        out.append(Segment(para, False, "text"))
    return out


def last_user_index(messages: list[dict[str, Any]]) -> int:
    for k in range(len(messages) - 1, -1, -1):
        if messages[k].get("role") == "user":
            return k
    return -1


def split_messages(messages: list[dict[str, Any]]) -> list[Part]:
    """Every message's content as segments (a message with nothing compressible: one
    protected segment, or none when its content is not a string)."""
    last = last_user_index(messages)
    parts = []
    for k, m in enumerate(messages):
        role = str(m.get("role", ""))
        content = m.get("content")
        part = Part(k, role)
        if isinstance(content, str) and content:
            if role in ("system", "developer", "user", "assistant"):
                earlier_turn = role in ("user", "assistant") and k < last
                part.segments = split_content(content, paragraphs_are_units=earlier_turn)
            else:
                part.segments = [Segment(content, False)]
        parts.append(part)
    return parts


def question_of(messages: list[dict[str, Any]], parts: list[Part]) -> str:
    """The text the context is ranked against: the last user message's own (non-document)
    text, or all of it when it is only documents."""
    last = last_user_index(messages)
    if last < 0:
        return ""
    own = " ".join(s.text for s in parts[last].segments if not s.unit).strip()
    if own:
        return own
    content = messages[last].get("content")
    return content if isinstance(content, str) else ""
