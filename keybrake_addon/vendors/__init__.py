"""Vendor modules, one per API Keybrake fronts, looked up by name or by host."""

from types import ModuleType

from . import stripe

VENDORS: dict[str, ModuleType] = {module.NAME: module for module in (stripe,)}

_BY_HOST: dict[str, ModuleType] = {host: module for module in VENDORS.values() for host in module.HOSTS}

VENDOR_HOSTS: tuple[str, ...] = tuple(_BY_HOST)


def vendor_named(name: str) -> ModuleType:
    try:
        return VENDORS[name]
    except KeyError:
        raise KeyError(f"unknown vendor {name!r}; Keybrake knows {', '.join(sorted(VENDORS))}") from None


def vendor_for_host(host: str) -> ModuleType | None:
    return _BY_HOST.get(host.lower().rstrip("."))
