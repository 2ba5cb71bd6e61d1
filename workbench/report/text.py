"""Untrusted text made safe to show, and small wording helpers shared by every view.

Model names, token strings, prompts, file paths and error messages can hold terminal escape
sequences (``ESC [ 2 J`` clears a screen, ``ESC ] 8`` makes a hidden link) and other control
characters. :func:`printable` makes them inert and visible: a newline, tab and carriage return
become the arrows the report already uses for tokens, every other control character (C0, DEL,
C1) and the bidirectional overrides become ``\\xNN`` / ``\\u202e`` escapes, so a string read on
a terminal or in a CI log says exactly what it holds and can never change the screen.
"""

from __future__ import annotations

import re

# C0 controls but \n and \t, DEL, C1 controls, and the Unicode bidi overrides/isolates that can
# reorder what a reader sees (CVE-2021-42574 "trojan source").
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_VISIBLE = {"\n": "\u21b5", "\t": "\u2192", "\r": "\u240d"}


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if match.group() in _VISIBLE:
        return _VISIBLE[match.group()]
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(value: object, keep_newlines: bool = True) -> str:
    """``value`` as text with every control character made inert and visible.

    ``keep_newlines``: newlines and tabs pass (multi-line messages stay multi-line); otherwise
    they become the arrows ``↵`` and ``→`` too (a token, a one-line field)."""
    text = str(value)
    if not keep_newlines:
        text = text.replace("\n", _VISIBLE["\n"]).replace("\t", _VISIBLE["\t"])
    return _UNSAFE.sub(_escape, text)


def token_text(label: str) -> str:
    """A token label made visible: control characters as in :func:`printable` (a newline is
    ``↵``), and a token of spaces alone as ``␣`` per space (an empty-looking box says nothing)."""
    text = printable(label, keep_newlines=False)
    if text and not text.strip(" "):
        return "\u2423" * len(text)
    return text
