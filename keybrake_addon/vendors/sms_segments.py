"""How many SMS segments a message body takes, which is what carriers (and Twilio) bill.

GSM-7 text fits 160 septets in one segment; a longer message is split into parts of 153
septets (7 go to the concatenation header). The GSM 03.38 extension characters are sent as
an escape plus a character, so they take 2 septets, and the pair is never split across two
parts. One character outside GSM-7 switches the whole message to UCS-2: 70 UTF-16 code units
in one segment, else parts of 67, and a surrogate pair (an emoji) is never split either.

Because of those unsplittable pairs, the part count is not simply ceil(total / 153): it is
found by filling parts one character at a time. Pure functions; no I/O.
"""

from collections.abc import Iterable

# GSM 03.38 default alphabet (basic table), in table order. ESC (0x1B) is not text.
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# The extension table: each is sent as ESC + character, 2 septets.
GSM7_EXTENSION = frozenset("^{}\\[~]|€\f")

GSM7_SINGLE, GSM7_PART = 160, 153  # septets
UCS2_SINGLE, UCS2_PART = 70, 67  # UTF-16 code units


def is_gsm7(body: str) -> bool:
    return all(char in GSM7_BASIC or char in GSM7_EXTENSION for char in body)


def gsm7_septets(char: str) -> int:
    return 2 if char in GSM7_EXTENSION else 1


def utf16_units(char: str) -> int:
    return 2 if ord(char) > 0xFFFF else 1


def count_segments(body: str) -> int:
    """Segments `body` is billed as. An empty body is 0: whether that is valid is the caller's call."""
    if is_gsm7(body):
        return _parts((gsm7_septets(char) for char in body), GSM7_SINGLE, GSM7_PART)
    return _parts((utf16_units(char) for char in body), UCS2_SINGLE, UCS2_PART)


def _parts(widths: Iterable[int], single: int, part: int) -> int:
    """Parts needed for characters of the given widths, none of them split across two parts."""
    widths = list(widths)
    total = sum(widths)
    if total == 0:
        return 0
    if total <= single:
        return 1
    parts, used = 1, 0
    for width in widths:
        if used + width > part:
            parts, used = parts + 1, 0
        used += width
    return parts
