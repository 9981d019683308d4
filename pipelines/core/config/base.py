"""What every config section shares: strict models and the one error type."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

from pipelines.core.logs import redact


class ConfigError(ValueError):
    """A configuration problem; the message names the key and where it was set, and is masked like every text the
    project prints (an error about a value never echoes a password or a secret setting)."""

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))


class Strict(BaseModel):
    """Base for config sections: unknown keys are errors, values are not coerced across types."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _segments(value: str) -> list[str]:
    return value.replace("\\", "/").split("/")


def _table_name(value: str) -> str:
    """A table's folder name inside its layer: one path segment, so no name can write outside the layer."""
    if not value or value in (".", "..") or not _NAME.fullmatch(value):
        raise ValueError(f"table name {value!r} must be one folder name inside its layer (letters, digits, "
                         f"'_', '-', '.'; no '/', no '..', not empty)")
    return value


def _relative_glob(value: str) -> str:
    """A glob under the landing zone: relative, without '..', so it never reads or watches files outside it."""
    if not value.strip() or value.startswith(("/", "~")) or "://" in value or ":\\" in value:
        raise ValueError(f"{value!r} must be a non-empty path relative to the landing zone")
    if ".." in _segments(value):
        raise ValueError(f"{value!r} must stay inside the landing zone (no '..' segment)")
    return value


def _location(value: str) -> str:
    """A root folder or URI (the workspace): not empty, not a file system's root, no '..' segment."""
    path = value.split("://", 1)[-1]
    if not value.strip() or path.strip("/") == "":
        raise ValueError(f"{value!r} must name a folder (not empty, not a file system's root)")
    if ".." in _segments(path):
        raise ValueError(f"{value!r} must not contain a '..' segment")
    return value


_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
TableName = Annotated[str, AfterValidator(_table_name)]
LandingGlob = Annotated[str, AfterValidator(_relative_glob)]
Location = Annotated[str, AfterValidator(_location)]
