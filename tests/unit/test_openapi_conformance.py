"""The vault API against its own published description: schemathesis, every check, every phase.

In-process: schemathesis loads /vault/openapi.json from the listener's Starlette app and sends
its requests through the ASGI interface, authenticated with a real unrestricted admin token,
to a VaultApi on a real SQLite ledger. Every check is on (response and status conformance,
Allow on 405, schema-valid data accepted, schema-invalid data rejected, no 5xx, ignored auth,
use after free...), in all four phases (examples, coverage, fuzzing, stateful), with a fixed
seed and derandomized generation so a failure reproduces.
"""

import os

import pytest
import schemathesis
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import Status, events

from keybrake_addon.alerts import sending
from keybrake_addon.api import vault_api
from keybrake_addon.api.openapi import OPENAPI
from keybrake_addon.ledger.opening import open_ledger
from keybrake_addon.ledger.urls import parse_database_url
from support.listener_app import listener_on, listener_on_sqlite

# Fixed, so a failure reproduces; set them to explore (a longer run finds what a short one misses).
SEED = int(os.environ.get("KEYBRAKE_CONFORMANCE_SEED", "20240610"))
# Per operation and phase: the whole run stays well under a minute on two cores.
MAX_EXAMPLES = int(os.environ.get("KEYBRAKE_CONFORMANCE_EXAMPLES", "30"))


POSITIVE_DATA_ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]  # schemathesis's default


def per_operation_settings() -> list[dict]:
    """Two settings, each for the operations whose description calls for it:
    - where an operation declares 422 (a rule the schema cannot state: a budget that must exist,
      a key that needs a cap), a schema-valid request may be refused with it. Everywhere else a
      schema-valid request refused with a 4xx other than 401/403/404/409/429 is a failure;
    - DELETE /vault/keys/{key_id} revokes, and the description says the key stays readable
      (status revoked, what it spent), as Stripe's deleted objects do: GET on it is no
      use-after-free. Every other operation keeps that check."""
    settings = [{"include-name": f"{method.upper()} {template}",
                 "checks": {"positive_data_acceptance": {"expected-statuses": [*POSITIVE_DATA_ACCEPTED, "422"]}}}
                for template, item in OPENAPI["paths"].items() for method, operation in item.items()
                if isinstance(operation, dict) and "422" in operation.get("responses", {})]
    assert "stays readable" in OPENAPI["paths"]["/vault/keys/{key_id}"]["delete"]["summary"]
    return [*settings, {"include-name": "GET /vault/keys/{key_id}", "checks": {"use_after_free": {"enabled": False}}}]


def config_for(token: str) -> SchemathesisConfig:
    return SchemathesisConfig.from_dict({
        "operations": per_operation_settings(),
        "seed": SEED,
        "max-failures": 50,
        "headers": {"Authorization": f"Bearer {token}"},
        "workers": 1,
        "checks": {"enabled": True},
        "phases": {"examples": {"enabled": True}, "coverage": {"enabled": True}, "fuzzing": {"enabled": True},
                   "stateful": {"enabled": True, "max-steps": 8}},
        "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
    })


@pytest.fixture(params=["sqlite", "postgresql"])
def listener(request, tmp_path, monkeypatch):
    # Schemathesis sends hundreds of unauthenticated requests on purpose (ignored_auth, missing
    # Authorization): the per-address slow-down would turn them into minutes of sleeping.
    monkeypatch.setattr(vault_api, "FAILURES_BEFORE_SLOWDOWN", 10**9)
    # Alert tests and retries must not reach the network: every receiver "does not resolve".
    monkeypatch.setattr(sending, "resolve", lambda host, port: [])
    if request.param == "sqlite":
        made = listener_on_sqlite(tmp_path / "ledger.db")
    else:  # text PostgreSQL refuses (NUL) or reads otherwise must be a 400, never a 500
        made = listener_on(open_ledger(parse_database_url(request.getfixturevalue("pg_url"))))
    yield made
    made.ledger.close()


def run_schemathesis(app, token: str) -> tuple[dict, list[str]]:
    """(figures, failures): each distinct failure as 'OPERATION: check: title: message' and its curl."""
    schema = schemathesis.openapi.from_asgi("/vault/openapi.json", app, config=config_for(token))
    figures = {"operations": len(list(schema.get_all_operations())), "cases": 0, "phases": set(), "statuses": set()}
    failures: dict[tuple[str, str, str], str] = {}
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, events.PhaseFinished) and event.phase.skip_reason is None:
            figures["phases"].add(event.phase.name.value)
        elif isinstance(event, events.ScenarioFinished):
            figures["cases"] += len(event.recorder.cases)
            figures["statuses"] |= {i.response.status_code for i in event.recorder.interactions.values() if i.response}
            for checks in event.recorder.checks.values():
                for check in checks:
                    if check.status == Status.FAILURE and check.failure_info is not None:
                        failure = check.failure_info.failure
                        where = (event.recorder.label, check.name, failure.title)
                        failures.setdefault(where, f"{where[0]}: {where[1]}: {failure.title}: {failure.message}"
                                                   f"\n    {check.failure_info.code_sample}")
        elif isinstance(event, events.NonFatalError):
            failures.setdefault((event.label, "error", ""), f"{event.label}: error: {event.info.message}")
        elif isinstance(event, events.FatalError):
            raise event.exception
    return figures, list(failures.values())


def test_the_vault_api_passes_every_schemathesis_check_against_its_own_description(listener):
    figures, failures = run_schemathesis(listener.app, listener.token)
    print(f"schemathesis: {figures['operations']} operations, {figures['cases']} cases, "
          f"phases {sorted(figures['phases'])}, statuses {sorted(figures['statuses'])}, {len(failures)} failures")
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures)
    # The run reached the API itself: every operation, every phase, and the token opened it.
    described = sum(1 for item in OPENAPI["paths"].values() for method in item if method != "parameters")
    assert figures["operations"] == described == 19
    assert {"examples", "coverage", "fuzzing", "stateful"} <= figures["phases"]
    assert {200, 201, 400, 401, 404, 405, 422} <= figures["statuses"]
