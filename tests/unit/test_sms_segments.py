"""SMS segment counting: GSM-7 and UCS-2, with escape pairs and surrogate pairs never split."""

import string

import pytest

from keybrake_addon.vendors.sms_segments import GSM7_BASIC, GSM7_EXTENSION, count_segments, is_gsm7

EMOJI = "\N{GRINNING FACE}"  # outside the BMP: one surrogate pair, 2 UTF-16 units
ZHE = "\N{CYRILLIC SMALL LETTER ZHE}"  # not GSM-7: the message becomes UCS-2


@pytest.mark.parametrize(
    "body, segments",
    [
        ("", 0),
        ("a", 1),
        # GSM-7: 160 septets in one segment, then parts of 153.
        ("a" * 160, 1),
        ("a" * 161, 2),
        ("a" * 306, 2),  # 2 x 153
        ("a" * 307, 3),
        # Extension characters take 2 septets.
        ("{" * 80, 1),  # 160 septets
        ("{" * 81, 2),  # 162 septets: 76 pairs (152 septets) + 5 pairs
        ("a" * 152 + "\N{EURO SIGN}", 1),  # 154 septets still fit one 160-septet segment
        ("a" * 159 + "\N{EURO SIGN}", 2),  # 161 septets: 153 + 8
        # 306 septets would be exactly 2 parts of 153, but the '[' escape pair cannot straddle:
        # part 1 takes the 152 'a' (the pair would make 154), part 2 takes '[' (2) + 151 'a' = 153,
        # and the last 'a' needs a third part.
        ("a" * 152 + "[" + "a" * 152, 3),
        ("a" * 152 + "\N{EURO SIGN}" + "a" * 152, 3),
        # Same length with the pair where it fits: 2 + 151 = 153 in part 1, 153 in part 2.
        ("[" + "a" * 304, 2),
        # Accented letters of the GSM table stay GSM-7 (1 septet each).
        ("\N{LATIN SMALL LETTER E WITH ACUTE}" * 160, 1),
        ("\N{LATIN SMALL LETTER E WITH ACUTE}" * 161, 2),
        # UCS-2: 70 units in one segment, then parts of 67.
        (ZHE * 70, 1),
        (ZHE * 71, 2),
        (ZHE * 134, 2),  # 2 x 67
        (ZHE * 135, 3),
        (EMOJI, 1),  # 2 units
        ("hello " + EMOJI, 1),  # the emoji makes it UCS-2: 8 units
        (ZHE * 66 + EMOJI, 1),  # 68 units still fit one 70-unit segment
        (EMOJI * 35, 1),  # 70 units
        (EMOJI * 36, 2),  # 72 units: 33 pairs (66 units) + 3 pairs
        # 134 units would be exactly 2 parts of 67, but the surrogate pair cannot straddle:
        # part 1 takes the 66 ZHE (the pair would make 68), part 2 takes the pair + 65 ZHE = 67,
        # and the last ZHE needs a third part.
        (ZHE * 66 + EMOJI + ZHE * 66, 3),
        # One non-GSM character turns a 160-character GSM text into UCS-2: 161 units -> 3 parts.
        ("a" * 159 + ZHE, 3),
        # Lower-case c-cedilla is not in the GSM basic table (only the capital is).
        ("\N{LATIN SMALL LETTER C WITH CEDILLA}" + "a" * 69, 1),
        ("\N{LATIN SMALL LETTER C WITH CEDILLA}" + "a" * 70, 2),
    ],
)
def test_count_segments(body, segments):
    assert count_segments(body) == segments


def test_gsm_basic_table_has_the_127_printable_entries():
    # 128 code points in GSM 03.38's default alphabet, less ESC.
    assert len(GSM7_BASIC) == 127
    assert set(string.ascii_letters + string.digits) <= GSM7_BASIC
    assert set("@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./:;<=>?¡ÄÖÑÜ§¿äöñüà") <= GSM7_BASIC
    assert GSM7_EXTENSION == set("^{}\\[~]|€\f")
    assert not GSM7_BASIC & GSM7_EXTENSION


@pytest.mark.parametrize(
    "body, gsm",
    [
        ("Hello, world! 0-9 @£$", True),
        ("{curly} [square] ~tilde~ |pipe| \\ ^ €", True),
        ("form\ffeed", True),
        ("backtick `", False),  # ` is not in GSM-7
        ("\N{LEFT DOUBLE QUOTATION MARK}smart quotes\N{RIGHT DOUBLE QUOTATION MARK}", False),
        ("tab\t", False),
        (EMOJI, False),
    ],
)
def test_is_gsm7(body, gsm):
    assert is_gsm7(body) is gsm
