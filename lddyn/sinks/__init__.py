"""Where recorded rows go: parquet part files and the run's ``run.json``."""

from lddyn.sinks.parquet import SCHEMA_VERSION, CorruptPartError, ParquetSink, read_table
from lddyn.sinks.runinfo import read_run_json, set_status

__all__ = ["SCHEMA_VERSION", "CorruptPartError", "ParquetSink", "read_run_json", "read_table", "set_status"]
