"""The gate prices the bytes the vendor gets: an encoded body is refused for every vendor."""

import pytest

from keybrake_addon.body_framing import encoded_body_reason
from keybrake_addon.vendors.base import repeated_single_valued_headers


@pytest.mark.parametrize("headers", [
    {},
    {"content-encoding": "identity"},
    {"content-encoding": " Identity "},
    {"transfer-encoding": "chunked"},
    {"transfer-encoding": "Chunked", "content-encoding": ""},
])
def test_a_plain_body_passes(headers):
    assert encoded_body_reason(headers) is None


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd", "x-gzip", "compress",
                                    # codecs Python's decoder would apply, which no vendor would
                                    "quopri", "base64", "hex", "bz2", "zip",
                                    "gzip, identity", "identity, gzip", "identity,"])
def test_any_content_coding_but_identity_is_refused(coding):
    reason = encoded_body_reason({"content-encoding": coding})
    assert reason is not None and "Content-Encoding" in reason and coding.strip().lower() in reason


@pytest.mark.parametrize("coding", ["gzip, chunked", "deflate,chunked", "identity", "chunked, chunked", "gzip"])
def test_any_transfer_coding_but_chunked_is_refused(coding):
    reason = encoded_body_reason({"transfer-encoding": coding})
    assert reason is not None and "Transfer-Encoding" in reason


def test_a_second_coding_line_is_a_repeated_header():
    # Two lines would reach the vendor as "gzip, identity"; the gate's dict keeps only the last.
    fields = [(b"Content-Encoding", b"gzip"), (b"content-encoding", b"identity"),
              (b"Transfer-Encoding", b"chunked"), (b"Transfer-Encoding", b"chunked")]
    assert repeated_single_valued_headers(fields) == ("content-encoding", "transfer-encoding")
