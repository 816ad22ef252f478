"""What no ledger backend can store, replaced; everything else kept as it is."""

from keybrake_addon.text import is_storable, storable


def test_plain_and_non_ascii_text_is_kept_as_it_is():
    for text in ("/v1/payment_intents", "", "naïve ☃ 💸", "tab\tand\x1b escape", "\ufffd"):
        assert storable(text) == text and is_storable(text)


def test_nul_and_lone_surrogates_become_replacement_characters():
    assert storable("a\x00b") == "a\ufffdb"
    assert storable("/v1/\udcff\udcfe") == "/v1/\ufffd\ufffd"  # mitmproxy's stand-ins for 0xff 0xfe
    assert storable("é\x00\ud800") == "é\ufffd\ufffd"
    assert not is_storable("a\x00b") and not is_storable("\udcff")
    assert storable("😀") == "😀"  # a surrogate pair in UTF-16 terms, one code point here: kept
