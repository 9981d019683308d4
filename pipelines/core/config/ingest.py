"""The `ingest` section: landing sources, their parsing and the bronze tables they feed."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from pipelines.core.config.base import LandingGlob, Strict, TableName


class SourceConf(Strict):
    """One landing source: where its files are, how to parse them, which bronze table they feed.

    csv and jsonl are parsed line by line against the declared `columns`; image reads files with Spark's
    binaryFile source (recursive, `glob_filter`), decodes them to check they are images, and takes the label from
    the parent folder's name.
    """

    path: LandingGlob  # glob relative to the landing zone (csv, jsonl: files; image: a folder searched recursively)
    format: Literal["csv", "jsonl", "image"] = "csv"
    delimiter: str = ","
    header: bool = True
    null_values: list[str] = Field(default_factory=lambda: ["", "NA"])
    timestamp_format: str = "ISO8601"  # pandas/strptime format, or ISO8601
    columns: dict[str, str] = Field(default_factory=dict)  # ordered name -> Spark SQL type (csv, jsonl)
    partition_by: list[str] = Field(default_factory=list)
    table: TableName
    glob_filter: str = "*"  # image: file names to read; others in the folder are counted as ignored
    label_from_folder: bool = True  # image: label = name of the folder holding the file

    @field_validator("columns")
    @classmethod
    def _known_types(cls, v: dict[str, str]) -> dict[str, str]:
        allowed = {"string", "int", "bigint", "double", "float", "boolean", "date", "timestamp"}
        bad = {k: t for k, t in v.items() if t not in allowed}
        if bad:
            raise ValueError(f"unsupported column types {bad}; allowed: {sorted(allowed)}")
        return v

    @field_validator("delimiter")
    @classmethod
    def _one_char(cls, v: str) -> str:
        if len(v) != 1:
            raise ValueError("delimiter must be exactly one character")
        return v

    @model_validator(mode="after")
    def _columns_for_text(self) -> SourceConf:
        if self.format in ("csv", "jsonl") and not self.columns:
            raise ValueError(f"columns: a {self.format} source needs at least one declared column")
        return self


class LeaseConf(Strict):
    """The ingest lease (<workspace>/leases/ingest): one ingest at a time per workspace, and takeover of a dead
    holder. A holder in another process space (another host, or a container) is dead when the waiting run saw its
    heartbeat stand still for `expiry_s` on its own clock; in the same one, when its pid is gone. A holder whose
    heartbeat cannot be written for half of `expiry_s` stops. A run that finds a live holder waits up to `wait_s`,
    checking every `poll_s`."""

    expiry_s: float = Field(default=120, gt=0)
    heartbeat_s: float = Field(default=10, gt=0)
    wait_s: float = Field(default=1800, ge=0)
    poll_s: float = Field(default=2, gt=0)

    @model_validator(mode="after")
    def _beats_within_expiry(self) -> LeaseConf:
        if self.heartbeat_s * 3 > self.expiry_s:
            raise ValueError(f"heartbeat_s ({self.heartbeat_s}) must be at most a third of expiry_s "
                             f"({self.expiry_s}), so a few missed beats do not make a live holder look dead")
        return self


class IngestConf(Strict):
    """Each pipeline profile declares its own sources (conf/pipelines/<name>/ingest.yaml)."""

    sources: dict[str, SourceConf] = Field(default_factory=dict)
    lease: LeaseConf = LeaseConf()
    roll_back: list[str] = Field(default_factory=list)  # run ids a person declares dead: their unlogged rows go
    sniff_bytes: int = Field(default=65536, gt=0)
    # A landing file is taken once its size and modification time stayed unchanged this long, as the reader saw
    # them (pipelines/core/landing.py); one wait per run when new files are listed. Raise it on NFS mounts above
    # their attribute cache time.
    settle_s: float = Field(default=5, ge=0)
    select: list[str] = Field(default_factory=list)  # sources a run ingests by default; empty = all

    @field_validator("select")
    @classmethod
    def _known_sources(cls, v: list[str], info: Any) -> list[str]:
        unknown = sorted(set(v) - set(info.data.get("sources", {})))
        if unknown:
            raise ValueError(f"unknown sources {unknown}; configured: {sorted(info.data.get('sources', {}))}")
        return v
