"""Reading a DataRecorder spec field by field, each error naming its field path.

Owns `Reader` (one nested mapping with its path, typed getters with bounds and choices) and the
small readers every section shares (Secret keys, object lists, quantities, key names); pure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from datarecorder_operator import quantity
from datarecorder_operator.policy import key_name_problem
from datarecorder_operator.spec import SecretKey, SpecError


class Reader:
    """Reads one nested mapping with a field path for messages (`spec.kafka.brokers`)."""

    def __init__(self, data: Any, path: str) -> None:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise SpecError(f"{path} must be an object, got {type(data).__name__}")
        self.data: Mapping[str, Any] = data
        self.path = path

    def sub(self, key: str) -> Reader:
        return Reader(self.data.get(key), f"{self.path}.{key}")

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def text(self, key: str, default: str | None = None, *, choices: Sequence[str] = ()) -> str:
        value = self.data.get(key, default)
        if value is None:
            raise SpecError(f"{self.path}.{key} is required")
        if not isinstance(value, str):
            raise SpecError(f"{self.path}.{key} must be a string, got {value!r}")
        if choices and value not in choices:
            raise SpecError(f"{self.path}.{key} must be one of {', '.join(choices)}, got {value!r}")
        return value

    def opt_text(self, key: str) -> str | None:
        return self.text(key) if self.has(key) else None

    def integer(self, key: str, default: int, lo: int, hi: int) -> int:
        value = self.data.get(key, default)
        # bool is an int subclass in Python; YAML `true` must not pass as 1.
        if not isinstance(value, int) or isinstance(value, bool):
            raise SpecError(f"{self.path}.{key} must be an integer, got {value!r}")
        if not lo <= value <= hi:
            raise SpecError(f"{self.path}.{key} must be between {lo} and {hi}, got {value}")
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise SpecError(f"{self.path}.{key} must be true or false, got {value!r}")
        return value

    def text_list(self, key: str, default: Sequence[str] | None = None) -> tuple[str, ...]:
        value = self.data.get(key, default)
        if value is None:
            raise SpecError(f"{self.path}.{key} is required")
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise SpecError(f"{self.path}.{key} must be a list of strings, got {value!r}")
        if not value:
            raise SpecError(f"{self.path}.{key} must not be empty")
        if len(set(value)) != len(value):
            raise SpecError(f"{self.path}.{key} has duplicates: {value!r}")
        return tuple(value)

    def text_map(self, key: str) -> dict[str, str]:
        value = self.data.get(key) or {}
        if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise SpecError(f"{self.path}.{key} must map strings to strings, got {value!r}")
        return dict(value)


def parse_quantity(value: str | int | float, field: str) -> Decimal:
    """A Kubernetes quantity ("500m", "1Gi", 2) as a Decimal in base units."""
    try:
        return quantity.parse(value)
    except ValueError as exc:
        raise SpecError(f"{field} is not a Kubernetes quantity: {str(value)!r}") from exc


def secret_key(raw: Reader, name_field: str, key_field: str, default_key: str) -> SecretKey:
    return SecretKey(name=raw.text(name_field), key=raw.text(key_field, default_key))


def objects(root: Reader, key: str) -> tuple[Mapping[str, Any], ...]:
    value = root.data.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise SpecError(f"{root.path}.{key} must be a list of objects")
    return tuple(dict(v) for v in value)


def mapping_or_none(root: Reader, key: str) -> Mapping[str, Any] | None:
    value = root.data.get(key)
    if value is not None and not isinstance(value, Mapping):
        raise SpecError(f"{root.path}.{key} must be an object")
    return None if value is None else dict(value)


def exactly_one(raw: Reader, first: str, second: str, form: str) -> None:
    """Refuse a choice object that names neither or both of its two keys, or another key."""
    unknown = sorted(set(raw.data) - {first, second})
    if unknown or raw.has(first) == raw.has(second):
        extra = f" (unknown: {', '.join(unknown)})" if unknown else ""
        raise SpecError(f"{raw.path} must name exactly one of {first} and {second}{extra}; {form}")


def check_key_name(path: str, value: str) -> None:
    problem = key_name_problem(value)
    if problem is not None:
        raise SpecError(f"{path} {value!r} {problem} (it becomes part of object keys and paths)")
