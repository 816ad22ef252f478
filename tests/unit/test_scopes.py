"""Scoped issuers, the pure part: making and storing a scope, the ceilings, allowlist containment."""

import itertools
import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keybrake_addon.ledger.base import KeySpec
from keybrake_addon.vault.allowlist import parse_pattern
from keybrake_addon.vault.scopes import (
    InvalidScope,
    OverCeiling,
    Scope,
    check_ceilings,
    describe_scope,
    entry_inside,
    make_scope,
    read_scope,
    scope_document,
    scope_text,
)

USD = 1_000_000
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def key(**changes) -> KeySpec:
    values = dict(vendor="stripe", secret_name="default", label="run", daily_cap_micros=10 * USD,
                  total_cap_micros=None, max_calls=None, allowlist=("POST /v1/payment_intents",), allow_all=False,
                  allow_unpriced=False, expires_at=NOW + timedelta(hours=2))
    return KeySpec(**{**values, **changes})


def refused_field(scope: Scope, spec: KeySpec, default_ttl: str | None = None) -> str | None:
    try:
        check_ceilings(scope, spec, now=NOW, default_ttl=default_ttl)
    except OverCeiling as over:
        return over.field
    return None


# --- ceilings -----------------------------------------------------------------------------------

@pytest.mark.parametrize("scope, spec, field", [
    (Scope(vendors=("stripe",)), key(), None),
    (Scope(vendors=("twilio", "resend")), key(), "vendor"),
    (Scope(secret="default"), key(), None),
    (Scope(secret="team-a"), key(), "secret"),
    (Scope(max_daily_cap_micros=10 * USD), key(), None),
    (Scope(max_daily_cap_micros=10 * USD), key(daily_cap_micros=10 * USD + 1), "daily_usd_cap"),
    # no daily cap: the total cap bounds a day's spend too
    (Scope(max_daily_cap_micros=10 * USD), key(daily_cap_micros=None, total_cap_micros=5 * USD), None),
    (Scope(max_daily_cap_micros=10 * USD), key(daily_cap_micros=None, total_cap_micros=11 * USD), "daily_usd_cap"),
    (Scope(max_daily_cap_micros=10 * USD), key(daily_cap_micros=50 * USD, total_cap_micros=10 * USD), None),
    (Scope(max_total_cap_micros=100 * USD), key(), "total_usd_cap"),  # a daily cap alone has no total
    (Scope(max_total_cap_micros=100 * USD), key(total_cap_micros=100 * USD), None),
    (Scope(max_total_cap_micros=100 * USD), key(total_cap_micros=100 * USD + 1), "total_usd_cap"),
    (Scope(max_calls=50), key(), "max_calls"),
    (Scope(max_calls=50), key(max_calls=50), None),
    (Scope(max_calls=50), key(max_calls=51), "max_calls"),
    (Scope(max_ttl="2h"), key(), None),
    (Scope(max_ttl="2h"), key(expires_at=NOW + timedelta(hours=2, seconds=1)), "expires_in"),
    (Scope(max_ttl="2h"), key(expires_at=None), "expires_in"),
    # uncapped and allow-all keys need the token's explicit leave
    (Scope(vendors=("stripe",)), key(daily_cap_micros=None), "no_cap"),
    (Scope(vendors=("stripe",), may_mint_uncapped=True), key(daily_cap_micros=None), None),
    (Scope(vendors=("stripe",)), key(allowlist=(), allow_all=True), "allow_all"),
    (Scope(vendors=("stripe",), may_mint_allow_all=True), key(allowlist=(), allow_all=True), None),
    (Scope(allow=("* /**",), may_mint_allow_all=True), key(allowlist=(), allow_all=True), "allow_all"),
    (Scope(vendors=("stripe",)), key(allow_unpriced=True), "allow_unpriced"),
    (Scope(vendors=("stripe",), may_mint_unpriced=True), key(allow_unpriced=True), None),
    # allowlists
    (Scope(allow=("POST /v1/payment_intents",)), key(), None),
    (Scope(allow=("POST /v1/refunds",)), key(), "allowed_endpoints"),
    (Scope(allow=("POST /v1/refunds", "POST /v1/payment_intents/**")), key(), None),
    (Scope(allow=("POST /v1/payment_intents",)),
     key(allowlist=("POST /v1/payment_intents", "POST /v1/refunds")), "allowed_endpoints"),
    # a scoped token never puts a path the gate would refuse as ambiguous into a key
    (Scope(vendors=("stripe",)), key(allowlist=("POST /v1/payment_intents/../refunds",)), "allowed_endpoints"),
    (Scope(allow=("POST /v1/payment_intents/**",)),
     key(allowlist=("POST /v1/payment_intents/%2e%2e/refunds",)), "allowed_endpoints"),
])
def test_each_ceiling_names_its_field(scope, spec, field):
    assert refused_field(scope, spec) == field


def test_the_default_ttl_must_lie_within_max_ttl_and_the_message_says_so():
    with pytest.raises(OverCeiling) as over:
        check_ceilings(Scope(max_ttl="1h"), key(expires_at=NOW + timedelta(hours=24)), now=NOW, default_ttl="24h")
    assert over.value.field == "expires_in"
    assert "default TTL (24h)" in over.value.reason and "expires_in <= 1h" in over.value.reason


def test_a_bare_scope_refuses_uncapped_allow_all_and_unpriced_together():
    spec = key(daily_cap_micros=None, allowlist=(), allow_all=True, allow_unpriced=True)
    assert refused_field(Scope(vendors=("stripe",)), spec) == "allow_all"
    assert refused_field(Scope(vendors=("stripe",), may_mint_allow_all=True), spec) == "no_cap"
    assert refused_field(Scope(vendors=("stripe",), may_mint_allow_all=True, may_mint_uncapped=True),
                         spec) == "allow_unpriced"


# --- making and storing scopes ------------------------------------------------------------------

def test_no_ceiling_means_unrestricted():
    assert make_scope() is None
    assert scope_text(None) is None and read_scope(None) is None
    assert describe_scope(None) == "unrestricted" and scope_document(None) is None


def test_a_scope_round_trips_through_its_stored_form():
    scope = make_scope(vendors=["stripe", "stripe", "twilio"], secret="team-a",
                       allow=["post  /v1/payment_intents/**", "GET /v1/charges/*"],
                       max_daily_cap_micros=10 * USD, max_total_cap_micros=100 * USD, max_calls=50, max_ttl=" 2h ",
                       may_mint_unpriced=True)
    assert scope.vendors == ("stripe", "twilio") and scope.allow == ("POST /v1/payment_intents/**",
                                                                     "GET /v1/charges/*")
    assert scope.max_ttl == "2h"
    assert read_scope(scope_text(scope)) == scope
    assert json.loads(scope_text(scope))["max_calls"] == 50
    assert describe_scope(scope) == ("vendor=stripe,twilio secret=team-a allow=POST /v1/payment_intents/**,"
                                     "GET /v1/charges/* daily<=$10.00 total<=$100.00 calls<=50 ttl<=2h "
                                     "may-mint=unpriced")
    assert scope_document(scope)["max_daily_usd_cap"] == "10.00"


@pytest.mark.parametrize("ceilings, field", [
    ({"vendors": ["paypal"]}, "vendor"),
    ({"secret": "a\x1b]0;x\x07"}, "secret"),
    ({"allow": ["POST v1/x"]}, "allow"),
    ({"allow": ["POST /v1/../x"]}, "allow"),
    ({"allow": ["POST /v1//x"]}, "allow"),
    ({"max_ttl": "2 weeks"}, "max_ttl"),
    ({"max_calls": -1}, "max_calls"),
    ({"max_daily_cap_micros": USD, "may_mint_uncapped": True}, "may_mint_uncapped"),
    ({"max_total_cap_micros": USD, "may_mint_uncapped": True}, "may_mint_uncapped"),
    ({"allow": ["GET /v1/x"], "may_mint_allow_all": True}, "may_mint_allow_all"),
    ({"may_mint_allow_all": True}, "may_mint"),  # no ceiling to relax
])
def test_contradictory_or_malformed_ceilings_are_refused_at_creation(ceilings, field):
    with pytest.raises(InvalidScope) as refused:
        make_scope(**ceilings)
    assert refused.value.field == field


@pytest.mark.parametrize("stored", [
    '{"owner_team": "a"}',  # a ceiling from a newer release: never read as "no ceiling"
    '{"max_calls": "50"}', '{"max_calls": true}', '{"max_calls": -1}', '{"vendors": "stripe"}',
    '{"may_mint_uncapped": 1}', "[]", "not json",
])
def test_a_stored_scope_this_code_cannot_read_is_refused_not_ignored(stored):
    with pytest.raises(InvalidScope):
        read_scope(stored)


# --- allowlist containment ----------------------------------------------------------------------

@pytest.mark.parametrize("entry, ceiling, inside", [
    ("POST /v1/payment_intents", "POST /v1/payment_intents", True),
    ("POST /v1/payment_intents", "POST /v1/payment_intents/**", True),
    ("POST /v1/payment_intents/pi_1/capture", "POST /v1/payment_intents/**", True),
    ("POST /v1/payment_intents/*/capture", "POST /v1/payment_intents/*/*", True),
    ("POST /v1/payment_intents/pi_1", "POST /v1/payment_intents/*", True),
    ("POST /v1/payment_intents/**", "POST /v1/payment_intents/**", True),
    ("POST /v1/payment_intents/*/**", "POST /v1/payment_intents/**", True),
    ("POST /v1/**", "POST /**", True),
    ("POST /**", "* /**", True),
    # wider than the ceiling
    ("POST /v1/payment_intents/**", "POST /v1/payment_intents", False),
    ("POST /v1/payment_intents/**", "POST /v1/payment_intents/*/**", False),  # it allows /v1/payment_intents
    ("POST /v1/*", "POST /v1/payment_intents", False),
    ("POST /v1/*/capture", "POST /v1/payment_intents/*", False),
    ("POST /**", "POST /v1/**", False),
    ("POST /v1/payment_intents/*", "POST /v1/payment_intents/*/**", True),
    # a trailing slash is an empty segment, which `*` does not match
    ("POST /v1/payment_intents/", "POST /v1/payment_intents/*", False),
    ("POST /v1/payment_intents/", "POST /v1/payment_intents", False),
    ("POST /v1/payment_intents/", "POST /v1/payment_intents/**", True),
    ("POST /v1/payment_intents", "POST /v1/payment_intents/", False),
    # methods: case does not matter; `*` holds every method, so only `*` holds it
    ("post /v1/refunds", "POST /v1/refunds", True),
    ("POST /v1/refunds", "post /v1/refunds", True),
    ("POST /v1/refunds", "* /v1/refunds", True),
    ("* /v1/refunds", "POST /v1/refunds", False),
    ("GET /v1/refunds", "POST /v1/refunds", False),
    ("HEAD /v1/refunds", "GET /v1/refunds", False),
    # paths do not fold case, and literals are literal
    ("POST /V1/refunds", "POST /v1/refunds", False),
    ("POST /v1.0/x", "POST /v1/x", False),
    ("POST /v1/refunds", "POST /v1/refund", False),
    ("POST /v1/refunds2", "POST /v1/refunds", False),
    ("POST /v1/refunds/**", "POST /v1/refund/**", False),
    # dot segments are literal text to the matcher (the gate refuses them before it)
    ("POST /v1/payment_intents/../refunds", "POST /v1/refunds", False),
    ("POST /v1/refunds/..", "POST /v1/refunds", False),
])
def test_entry_inside(entry, ceiling, inside):
    assert entry_inside(entry, ceiling) is inside


# The property behind "inside": whatever call the key's entry allows, the ceiling allows, checked
# with the matcher the gate uses. Segments include empty ones, dots, a newline and an escape.
SEGMENTS = ("a", "b", "", "..", "a\nb", "%2f")
PATTERN_SEGMENTS = st.sampled_from(("a", "b", "*", "", ".."))
METHODS = ("GET", "POST", "*")


@st.composite
def patterns(draw) -> str:
    segments = draw(st.lists(PATTERN_SEGMENTS, max_size=3))
    if draw(st.booleans()):
        segments.append("**")
    return f"{draw(st.sampled_from(METHODS))} /" + "/".join(segments)


def all_paths(max_segments: int = 4):
    yield ""
    for count in range(1, max_segments + 1):
        for parts in itertools.product(SEGMENTS + ("c",), repeat=count):
            yield "/" + "/".join(parts)
    yield "/a/b\n"


PATHS = list(all_paths())


@settings(max_examples=300, deadline=None)
@given(patterns(), patterns())
def test_inside_agrees_with_the_matcher(entry, ceiling):
    key, limit = parse_pattern(entry), parse_pattern(ceiling)
    calls = [(method, path) for method in ("GET", "POST", "PURGE") for path in PATHS]
    outside = [call for call in calls if key.matches(*call) and not limit.matches(*call)]
    if entry_inside(entry, ceiling):
        assert outside == [], f"{entry!r} inside {ceiling!r}, yet {outside[:3]} pass only the key"
    else:
        # Exact for one ceiling: a refusal always has a witness, within four segments.
        assert outside, f"{entry!r} refused under {ceiling!r} with no call to show for it"


@pytest.mark.parametrize("ceiling", [{"max_calls": 0}, {"max_daily_cap_micros": 0}, {"max_total_cap_micros": 0}])
def test_a_zero_ceiling_is_a_ceiling_not_unrestricted(ceiling):
    scope = make_scope(**ceiling)
    assert scope is not None and read_scope(scope_text(scope)) == scope
    assert refused_field(scope, key(daily_cap_micros=USD, total_cap_micros=USD, max_calls=1)) is not None


def test_a_budget_ceiling_survives_storage_and_shows_in_the_list():
    from keybrake_addon.vault.scopes import describe_scope, read_scope, scope_document, scope_text

    scope = make_scope(budget="team-a")
    assert read_scope(scope_text(scope)) == scope
    assert scope_document(scope)["budget"] == "team-a"
    assert "budget=team-a" in describe_scope(scope)
