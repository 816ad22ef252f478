"""Access log lines: the fields, one bounded line whatever a stranger sent, never a credential."""

import json
import logging
from datetime import UTC, datetime

import pytest

from keybrake_addon.access_log import (
    LIMITS,
    MAX_LINE_CHARS,
    REDACTED,
    AccessEntry,
    AccessLog,
    fit,
    format_json,
    format_text,
    json_escape,
    text_escape,
)

AT = datetime(2026, 11, 28, 12, 0, 0, 123456, tzinfo=UTC)
VAULT_KEY = "sk_kb_" + "A1" * 21 + "z"  # the shape of a Stripe vault key, built at run time
ADMIN_TOKEN = "kba_" + "x-Y_z" * 9
STRIPE_SECRET = "sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc"
TWILIO_TOKEN = "0123456789abcdef" * 2
CALL = AccessEntry("call", "stripe", "POST", "/v1/payment_intents", "allowed", 200, "kbk_0123456789abcdef0123",
                   "jobs/billing", "settled", 50_000_000, 49_500_000, "pi_123", 12.345)


def parse_logfmt(line: str) -> dict[str, str]:
    fields, rest = {}, line
    while rest:
        name, _, rest = rest.partition("=")
        if rest.startswith('"'):
            end = 1
            while rest[end] != '"':
                end += 2 if rest[end] == "\\" else 1
            fields[name], rest = rest[1:end], rest[end + 2:]
        else:
            fields[name], _, rest = rest.partition(" ")
    return fields


def test_a_json_line_carries_every_field():
    line = format_json(CALL, AT)
    assert json.loads(line) == {
        "ts": "2026-11-28T12:00:00.123Z", "event": "call", "vendor": "stripe", "method": "POST",
        "path": "/v1/payment_intents", "status": 200, "decision": "allowed", "outcome": "settled",
        "key_id": "kbk_0123456789abcdef0123", "label": "jobs/billing", "reserved_usd": "50.00",
        "actual_usd": "49.50", "object_id": "pi_123", "duration_ms": 12.3}


def test_a_text_line_is_logfmt_with_the_same_fields():
    fields = parse_logfmt(format_text(CALL, AT))
    assert fields == {"ts": "2026-11-28T12:00:00.123Z", "event": "call", "vendor": "stripe", "method": "POST",
                      "path": "/v1/payment_intents", "status": "200", "decision": "allowed", "outcome": "settled",
                      "key_id": "kbk_0123456789abcdef0123", "label": "jobs/billing", "reserved_usd": "50.00",
                      "actual_usd": "49.50", "object_id": "pi_123", "duration_ms": "12.3"}


def test_a_keyless_refusal_has_dashes_for_what_it_lacks():
    refusal = AccessEntry("refusal", "stripe", "GET", "/v1/balance", "keybrake_missing_key", 401)
    fields = parse_logfmt(format_text(refusal, AT))
    assert (fields["decision"], fields["status"], fields["key_id"], fields["actual_usd"]) == (
        "keybrake_missing_key", "401", "-", "-")
    assert json.loads(format_json(refusal, AT))["key_id"] is None


@pytest.mark.parametrize("hostile", [
    "/v1/charges\n[fake] keybrake: all good",
    "/v1/\x1b]0;owned\x07\x1b[2J",
    "/v1/\u202etxt.exe",  # a bidi override reorders what a terminal shows
    "/v1/\u2028next line",
    "/v1/\x9b31m",  # C1: a CSI for some terminals
    '/v1/" key_id="forged',
])
@pytest.mark.parametrize("fmt", [format_text, format_json])
def test_a_strangers_path_cannot_forge_a_line_or_act_on_a_terminal(hostile, fmt):
    line = fmt(AccessEntry("refusal", "stripe", "POST", hostile, "keybrake_unknown_key", 401, label=hostile), AT)
    assert line.isprintable() and "\n" not in line
    if fmt is format_text:
        assert parse_logfmt(line)["key_id"] == "-"  # the quote did not open a field of its own
    else:
        assert json.loads(line)["key_id"] is None and json.loads(line)["path"] == hostile


@pytest.mark.parametrize("fmt", [format_text, format_json])
def test_every_field_at_its_worst_still_makes_a_bounded_line(fmt):
    huge = AccessEntry("call", "stripe" * 100, "P" * 10_000, "/v1/" + "\u202e" * 100_000, "allowed" * 100, 200,
                       "k" * 1000, "\x1b" * 100_000, "settled" * 100, 10**15, 10**15, "\U0001F600" * 10_000, 1e12)
    line = fmt(huge, AT)
    assert len(line) <= MAX_LINE_CHARS and "\n" not in line and line.isprintable()
    assert "..." in line


@pytest.mark.parametrize("escape", [text_escape, json_escape])
def test_fit_cuts_on_escape_boundaries_and_marks_the_cut(escape):
    assert fit("short", 10, escape) == "short"
    assert fit("x" * 10, 10, escape) == "x" * 10  # exactly at the limit: kept whole
    cut = fit("\x1b" * 10, 20, escape)
    assert cut.endswith("...") and len("".join(map(escape, cut[:-3]))) + 3 <= 20
    assert set(cut[:-3]) == {"\x1b"}  # whole characters only: no half of an escape
    assert len(fit("a" * 1000, LIMITS["path"], escape)) == LIMITS["path"]


@pytest.mark.parametrize("credential", [VAULT_KEY, "re_kb_" + "B2" * 21 + "c", "kb_" + "C3" * 21 + "d", ADMIN_TOKEN,
                                        "kbw_" + "w" * 43, STRIPE_SECRET, "rk_test_" + "r" * 24])
@pytest.mark.parametrize("fmt", [format_text, format_json])
def test_a_credential_anywhere_in_a_strangers_field_is_redacted(credential, fmt):
    entry = AccessEntry("call", "stripe", "GET", f"/v1/customers/{credential}/x", "allowed", 200, "kbk_1",
                        f"label-{credential}", "settled", 0, 0, f"obj {credential}", 1.0)
    line = fmt(entry, AT)
    assert credential not in line and credential[:20] not in line and line.count(REDACTED) == 3


def test_a_credential_cut_by_the_bound_is_redacted_before_the_cut():
    path = "/v1/" + "a" * (LIMITS["path"] - 20) + "/" + VAULT_KEY
    line = format_text(AccessEntry("refusal", "stripe", "GET", path, "keybrake_unknown_key", 401), AT)
    assert VAULT_KEY[:12] not in line


def test_a_path_segment_shaped_like_the_vendors_secret_is_redacted():
    twilio = f"/2010-04-01/Accounts/AC{'a' * 32}/Messages/{TWILIO_TOKEN}.json"
    line = format_json(AccessEntry("call", "twilio", "GET", twilio, "allowed", 200), AT)
    assert f"AC{'a' * 32}" in line  # an Account SID is not a secret
    line = format_json(AccessEntry("call", "twilio", "GET", f"/2010-04-01/Accounts/{TWILIO_TOKEN}", "allowed", 200),
                       AT)
    assert TWILIO_TOKEN not in line
    resend = format_json(AccessEntry("call", "resend", "GET", "/emails/re_live" + "k" * 30, "allowed", 200), AT)
    assert "re_live" not in resend
    # A Stripe refund id starts re_ too, and is no secret.
    refund = format_json(AccessEntry("call", "stripe", "GET", "/v1/refunds/re_3Mtw" + "q" * 20, "allowed", 200), AT)
    assert "re_3Mtw" in refund


def test_the_log_writes_lines_to_a_file_and_reopens_it_after_rotation(tmp_path):
    path = tmp_path / "access.log"
    log = AccessLog()
    log.configure("json", str(path))
    log._write(lambda: CALL)
    (tmp_path / "access.log").rename(tmp_path / "access.log.1")
    log._write(lambda: CALL)
    log.close()
    assert len((tmp_path / "access.log.1").read_text().splitlines()) == 1
    assert len(path.read_text().splitlines()) == 1


def test_off_writes_nothing_and_a_file_needs_a_format(tmp_path, capsys):
    log = AccessLog()
    log.configure("off")
    assert not log.enabled
    log.refused("stripe", "GET", "/v1/x", None)  # not even looked at
    assert capsys.readouterr().err == ""
    with pytest.raises(ValueError, match="needs a format"):
        log.configure("off", str(tmp_path / "x.log"))
    with pytest.raises(OSError):
        log.configure("json", str(tmp_path / "missing-dir" / "x.log"))


def test_a_failing_write_never_raises_and_is_reported_once(tmp_path, caplog):
    log = AccessLog()
    log.configure("text", str(tmp_path / "access.log"))

    class Broken:
        def write(self, line):
            raise OSError(28, "No space left on device")

        def close(self):
            pass

    log._sink = Broken()
    with caplog.at_level(logging.WARNING, logger="keybrake"):
        for _ in range(3):
            log._write(lambda: CALL)
    assert [r.getMessage() for r in caplog.records] == [
        "keybrake: cannot write the access log (OSError); lines are dropped until it can"]


@pytest.mark.parametrize(("chosen", "path", "terminal", "expected"), [
    (None, None, True, "text"),  # a person reads it
    (None, None, False, "json"),  # a log shipper reads it
    (None, "/var/log/keybrake.log", True, "json"),
    ("text", "/var/log/keybrake.log", False, "text"),
    ("off", None, True, "off"),
])
def test_the_default_format_follows_who_reads_it(monkeypatch, chosen, path, terminal, expected):
    from keybrake_addon.cli import setup

    monkeypatch.setattr(setup.sys.stderr, "isatty", lambda: terminal)
    assert setup._access_log_format(chosen, path) == expected


def test_off_with_a_file_is_a_usage_error():
    import click

    from keybrake_addon.cli import setup

    with pytest.raises(click.UsageError, match="needs --access-log json or text"):
        setup._access_log_format("off", "/tmp/x.log")
