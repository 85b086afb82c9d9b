"""Read a ferry lake with DuckDB, pyarrow and polars; fail if any disagrees."""
import sys

import duckdb
import polars as pl
import pyarrow.dataset as ds

lake = sys.argv[1]
raw = f"{lake}/raw/crm/contacts"
expected = 10

n_duck = duckdb.sql(
    f"select count(*) from read_parquet('{raw}/**/*.parquet', union_by_name=true)"
).fetchall()[0][0]
table = ds.dataset(raw, format="parquet").to_table()
n_polars = pl.scan_parquet(f"{raw}/**/*.parquet").select(pl.len()).collect().item()
n_log = duckdb.sql(
    f"select sum(rows) from read_parquet('{lake}/_ferry/ingestions/**/*.parquet')"
).fetchall()[0][0]

print(f"interop: duckdb={n_duck} pyarrow={table.num_rows} polars={n_polars} ingestions={n_log}")
assert n_duck == table.num_rows == n_polars == n_log == expected
assert str(table.schema.field("_ferry_loaded_at").type) == "timestamp[us, tz=UTC]"
