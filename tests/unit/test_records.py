"""`records.frozen`: the dataclass(frozen=True) it stands for, only quicker to build."""

import dataclasses
import importlib
import pickle
from dataclasses import FrozenInstanceError, field

import pytest

from keybrake_addon.records import frozen, stock_init

# The modules whose records are built on every call: each of their frozen records must be built
# alike by both inits.
HOT_MODULES = ("keybrake_addon.ledger.decisions", "keybrake_addon.ledger.base", "keybrake_addon.ledger.store",
               "keybrake_addon.vendors.base", "keybrake_addon.gate")


@frozen
class Sample:
    name: str
    count: int = 0
    tags: tuple[str, ...] = ()
    extra: list[int] = field(default_factory=list, hash=False)
    note: str | None = field(default=None, kw_only=True)


def built_by_stock_init(cls, *args, **kwargs):
    instance = object.__new__(cls)
    stock_init(cls)(instance, *args, **kwargs)
    return instance


@pytest.mark.parametrize(("args", "kwargs"), [
    (("a",), {}),
    (("a", 3), {}),
    (("a", 3, ("x",), [1]), {"note": "n"}),
    ((), {"name": "a", "extra": [2], "count": 5}),
])
def test_built_alike_by_both_inits(args, kwargs):
    quick, stock = Sample(*args, **kwargs), built_by_stock_init(Sample, *args, **kwargs)
    assert vars(quick) == vars(stock)
    assert quick == stock and hash(Sample("a")) == hash(built_by_stock_init(Sample, "a"))
    assert repr(quick) == repr(stock)


def test_a_default_factory_makes_a_new_value_each_time():
    first, second = Sample("a"), Sample("b")
    assert first.extra == [] and first.extra is not second.extra


@pytest.mark.parametrize(("args", "kwargs"), [
    ((), {}),  # name missing
    (("a",), {"colour": "red"}),  # no such field
    (("a", 1, (), [], "n"), {}),  # note is keyword-only
    (("a",), {"name": "b"}),  # given twice
])
def test_the_same_calls_are_refused(args, kwargs):
    with pytest.raises(TypeError):
        Sample(*args, **kwargs)
    with pytest.raises(TypeError):
        built_by_stock_init(Sample, *args, **kwargs)


def test_still_frozen_and_replaceable_and_picklable():
    sample = Sample("a", 1)
    with pytest.raises(FrozenInstanceError):
        sample.count = 2
    with pytest.raises(FrozenInstanceError):
        del sample.name
    assert dataclasses.replace(sample, count=2) == Sample("a", 2)
    assert pickle.loads(pickle.dumps(sample)) == sample


def test_what_it_cannot_build_alike_is_refused_when_the_class_is_made():
    with pytest.raises(TypeError, match="__post_init__"):
        @frozen
        class Checked:
            value: int

            def __post_init__(self) -> None:
                pass

    with pytest.raises(TypeError, match="plain fields"):
        @frozen
        class Hidden:
            value: int
            derived: int = field(default=0, init=False)

    with pytest.raises(TypeError, match="plain fields"):
        @frozen
        class Passed:
            value: int
            seed: dataclasses.InitVar[int] = 0


def _records_of(module_name: str) -> list[type]:
    module = importlib.import_module(module_name)
    return [value for value in vars(module).values()
            if isinstance(value, type) and value.__module__ == module_name and dataclasses.is_dataclass(value)
            and value.__dataclass_params__.frozen]


def _sample_arguments(cls) -> dict:
    # Distinct values for every field, whatever its type: the inits only place them.
    return {f.name: f"value-of-{f.name}" for f in dataclasses.fields(cls)}


@pytest.mark.parametrize("module_name", HOT_MODULES)
def test_every_record_of_the_hot_path_is_quick_and_built_alike(module_name):
    records = _records_of(module_name)
    assert records, f"{module_name} has no frozen records: update HOT_MODULES"
    for cls in records:
        try:
            stock_init(cls)
        except TypeError:
            pytest.fail(f"{cls.__qualname__} is a plain dataclass(frozen=True), slow to build: use records.frozen")
        arguments = _sample_arguments(cls)
        assert vars(cls(**arguments)) == vars(built_by_stock_init(cls, **arguments)), cls.__qualname__
        required = {f.name: arguments[f.name] for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        assert vars(cls(**required)) == vars(built_by_stock_init(cls, **required)), cls.__qualname__
