"""Throughput and latency measurement of inference backends (see `resnetkit bench`)."""

from resnetkit._helpers import machine_info, machine_line
from resnetkit.bench.timing import bench_backends, format_table, time_fn

__all__ = ["bench_backends", "format_table", "machine_info", "machine_line", "time_fn"]
