#!/usr/bin/env python3
"""The DuckDB side of the governance benchmark (crates/custos-server/benches/governance.rs).

Usage: duckdb_query.py ROWS.arrow [RUNS]

Converts the Arrow IPC file the benchmark wrote (the same rows custos
stores) to Parquet with zstd (not timed), then runs the benchmark's queries
in DuckDB over the Parquet file, RUNS times each (default 3), and prints
JSON: {"duckdb": version, "threads": n, "queries": {name: {"secs": best,
"rows": [...]}}}. Needs `pip install duckdb pyarrow`.
"""
import json
import os
import sys
import time

import duckdb
import pyarrow as pa
import pyarrow.ipc
import pyarrow.parquet as pq

QUERIES = {
    "count_avg": "SELECT count(*), avg(length(message)) FROM t",
    "group_by": "SELECT severity, count(*) AS n, count(DISTINCT host) AS hosts FROM t GROUP BY severity ORDER BY severity",
}


def main():
    src = sys.argv[1]
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    table = pa.ipc.open_file(src).read_all()
    parquet = os.path.splitext(src)[0] + ".parquet"
    pq.write_table(table, parquet, compression="zstd")
    del table
    con = duckdb.connect()
    threads = os.cpu_count()
    con.execute(f"SET threads = {threads}")
    con.execute(f"CREATE VIEW t AS SELECT * FROM read_parquet('{parquet}')")
    out = {"duckdb": duckdb.__version__, "threads": threads, "parquet_bytes": os.path.getsize(parquet), "queries": {}}
    for name, sql in QUERIES.items():
        best, rows = None, None
        for _ in range(runs):
            t = time.perf_counter()
            rows = con.execute(sql).fetchall()
            d = time.perf_counter() - t
            best = d if best is None else min(best, d)
        out["queries"][name] = {"secs": best, "rows": [list(r) for r in rows]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
