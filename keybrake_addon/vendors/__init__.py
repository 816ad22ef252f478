"""Vendor modules, one per API Keybrake fronts, looked up by name or by host."""

from types import ModuleType

from . import resend, stripe, twilio

VENDORS: dict[str, ModuleType] = {module.NAME: module for module in (stripe, twilio, resend)}

_BY_HOST: dict[str, ModuleType] = {host: module for module in VENDORS.values() for host in module.HOSTS}

VENDOR_HOSTS: tuple[str, ...] = tuple(_BY_HOST)


def vendor_for_host(host: str) -> ModuleType | None:
    return _BY_HOST.get(host.lower().rstrip("."))
