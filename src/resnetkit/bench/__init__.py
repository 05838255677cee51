"""Throughput and latency measurement of inference backends (see `resnetkit bench`)."""

from resnetkit.bench.timing import bench_backends, format_table, machine_info, time_fn

__all__ = ["bench_backends", "format_table", "machine_info", "time_fn"]
