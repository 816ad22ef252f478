"""Bodies the gate refuses before any vendor module prices them: encoded ones.

The gate prices the bytes the vendor will get, as they are. A body under a content coding
(gzip, deflate, or a name only Python's codecs know) or a transfer coding other than chunked
would be read one way by the gate and possibly another by the vendor: a gzip member followed by
more bytes, say, decodes to one form and reads raw as another. No vendor SDK sends either, so
refusing them costs real clients nothing and leaves no second reading to exploit.
"""

from collections.abc import Mapping

_PLAIN_CONTENT_CODINGS = frozenset({"", "identity"})
_PLAIN_TRANSFER_CODINGS = frozenset({"", "chunked"})


def encoded_body_reason(headers: Mapping[str, str]) -> str | None:
    """Why a request's body is refused as encoded, or None. `headers`: lower-cased names, one
    value each (a repeated line is refused before this, as a repeated single-valued header)."""
    content_coding = headers.get("content-encoding", "").strip().lower()
    if content_coding not in _PLAIN_CONTENT_CODINGS:
        return (f"Keybrake refuses a compressed or encoded body (Content-Encoding: {content_coding}): it prices "
                "the bytes the vendor gets, so send the body as it is")
    transfer_coding = headers.get("transfer-encoding", "").strip().lower()
    if transfer_coding not in _PLAIN_TRANSFER_CODINGS:
        return (f"Keybrake refuses Transfer-Encoding: {transfer_coding} (only chunked): it prices the bytes "
                "the vendor gets, so send the body as it is")
    return None
