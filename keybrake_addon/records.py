"""Frozen dataclasses that are quick to build, for the records made on every call.

A frozen dataclass's own __init__ sets each field through object.__setattr__, about 0.12 us a
field. The ledger builds a dozen records per call (counters, plans, reservation states), and in
the batched benchmark those constructors were a sixth of all the time. `frozen` is
`dataclass(frozen=True)` with an __init__ that fills the instance's dict directly: three times
quicker. Everything else is the dataclass's own: assigning a field still raises
FrozenInstanceError, and equality, hashing, repr, pickling and dataclasses.replace are unchanged.
"""

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")

_STOCK_INITS: dict[type, Any] = {}  # the dataclass's own __init__, kept for the equivalence tests


def frozen(cls: type[T]) -> type[T]:
    made = dataclasses.dataclass(frozen=True)(cls)
    _STOCK_INITS[made] = made.__init__
    made.__init__ = _quick_init(made)
    return made


def stock_init(cls: type) -> Any:
    """The __init__ `dataclass(frozen=True)` made for a `frozen` class (for tests)."""
    if cls not in _STOCK_INITS:
        raise TypeError(f"{cls.__qualname__} was not made by frozen()")
    return _STOCK_INITS[cls]


def _quick_init(cls: type):
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__}: frozen() does not run __post_init__; use dataclass(frozen=True)")
    every = cls.__dataclass_fields__.values()
    fields = dataclasses.fields(cls)
    if len(fields) != len(every) or any(not f.init for f in fields):
        raise TypeError(f"{cls.__name__}: frozen() takes plain fields only (no InitVar, no init=False)")
    scope: dict[str, Any] = {"_MISSING": dataclasses.MISSING}
    positional, keyword_only, body = [], [], []
    for field in fields:
        if field.default is not dataclasses.MISSING:
            scope[f"_default_{field.name}"] = field.default
            parameter = f"{field.name}=_default_{field.name}"
            value = field.name
        elif field.default_factory is not dataclasses.MISSING:
            scope[f"_factory_{field.name}"] = field.default_factory
            parameter = f"{field.name}=_MISSING"
            value = f"_factory_{field.name}() if {field.name} is _MISSING else {field.name}"
        else:
            parameter = value = field.name
        (keyword_only if field.kw_only else positional).append(parameter)
        body.append(f"    _instance_dict[{field.name!r}] = {value}\n")
    parameters = ", ".join(["self", *positional, *(["*", *keyword_only] if keyword_only else [])])
    source = f"def __init__({parameters}):\n    _instance_dict = self.__dict__\n" + "".join(body)
    exec(source, scope)  # noqa: S102 - source built from the class's own field names, as dataclasses does
    init = scope["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    return init
