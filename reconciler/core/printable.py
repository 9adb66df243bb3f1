"""Text that is safe to show on a terminal: control characters (terminal escape sequences,
bidi overrides) in names and messages that came from a spec or a compose file are shown
escaped (`\\x1b`), never interpreted.

`clean` escapes every C0/C1 control character except newline and tab, DEL, and the Unicode
bidi controls. The CLI's `SafeStream` (in `reconciler.cli`) wraps stdout/stderr with it:
everything written through it is cleaned, except the plain SGR colors the CLI paints with.
"""

from __future__ import annotations

import re

_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_SGR = re.compile(r"\x1b\[(?:0|1|3[0-7])m")


def _escape(match: re.Match[str]) -> str:
    char = match.group(0)
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def clean(text: str) -> str:
    """`text` with every control character shown escaped (newlines and tabs kept)."""
    return _CONTROL.sub(_escape, text)


def clean_keep_colors(text: str) -> str:
    """Like `clean`, but the plain SGR color sequences (`ESC[31m`, `ESC[0m`) stay."""
    if "\x1b" not in text:
        return clean(text)
    out, last = [], 0
    for match in _SGR.finditer(text):
        out.append(clean(text[last:match.start()]))
        out.append(match.group(0))
        last = match.end()
    out.append(clean(text[last:]))
    return "".join(out)
