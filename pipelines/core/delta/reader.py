"""Delta tables into pandas with delta-rs and pyarrow, without Spark.
"""

from __future__ import annotations

import os
from urllib.parse import unquote

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import DeltaTable

from pipelines.core.delta.log import _local


def to_pandas(path: str, version: int | None = None, columns: list[str] | None = None) -> pd.DataFrame:
    """Read a Delta table (partitioned or not, written by either engine) into pandas with delta-rs, no Spark.

    delta-rs gives the table's files, partition values and schema; each file is read with pyarrow.parquet, the
    partition columns are added with the table's types and every column is cast to the table's type. (Works
    around deltalake 1.6 + pyarrow 14, where DeltaTable.to_pandas fails on partitioned tables.) Local paths.
    """
    root = _local(path)
    dt = DeltaTable(root, version=version)
    schema = pa.schema(dt.schema().to_arrow())
    wanted = list(columns or schema.names)
    unknown = [c for c in wanted if c not in schema.names]
    if unknown:
        raise ValueError(f"{path}: no columns {unknown} (table columns: {schema.names})")
    target = pa.schema([schema.field(c) for c in wanted])
    parts = set(dt.metadata().partition_columns)
    tables = []
    for add in pa.table(dt.get_add_actions(flatten=False)).to_pylist():
        if add.get("deletionVector"):
            raise NotImplementedError(f"{path}: deletion vectors are not supported by to_pandas")
        rel = unquote(add["path"])
        file = _local(rel) if "://" in rel or rel.startswith("/") else os.path.join(root, rel)
        pf = pq.ParquetFile(file, coerce_int96_timestamp_unit="us")
        present = set(pf.schema_arrow.names)
        data = pf.read(columns=[c for c in wanted if c not in parts and c in present])
        values = add.get("partition") or {}
        cols = []
        for field in target:
            if field.name in parts:
                cols.append(pa.array([values.get(field.name)] * data.num_rows, type=field.type))
            elif field.name in present:
                cols.append(data.column(field.name))
            else:
                cols.append(pa.nulls(data.num_rows, type=field.type))
        tables.append(pa.Table.from_arrays(cols, names=wanted).cast(target))
    table = pa.concat_tables(tables) if tables else target.empty_table()
    return table.to_pandas()
