"""Text cleaning done in our code, before the tokenizer sees the text.

The tokenizer itself has no normalizer, so with ``form="none"`` and ``strip_control=False``
``decode(encode(x)) == x`` holds exactly for any string (Chinese, mixed scripts, emoji).

    >>> normalize("ｆｕｌｌ\\x00width\\r\\n", "nfkc", strip_control=True)
    'fullwidth\\n'
"""

from __future__ import annotations

import unicodedata

__all__ = ["normalize", "FORMS"]

FORMS = ("nfkc", "nfc", "none")

# Unicode category Cc is C0 (U+0000-U+001F), DEL and C1 (U+007F-U+009F). Newline and tab carry
# layout (code, poems, tables), so they stay; "\r" goes, which also turns CRLF into LF.
# Format characters (Cf, e.g. the zero-width joiner inside emoji sequences) are not touched.
_CONTROL = {c: None for c in [*range(0x00, 0x20), *range(0x7F, 0xA0)] if c not in (0x09, 0x0A)}


def normalize(text: str, form: str = "nfkc", strip_control: bool = True) -> str:
    """Apply Unicode normalization ``form`` (nfkc|nfc|none), then drop control characters."""
    if form != "none":
        text = unicodedata.normalize(form.upper(), text)
    if strip_control:
        text = text.translate(_CONTROL)
    return text
