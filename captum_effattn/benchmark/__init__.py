r"""Benchmark: data sets, models, methods, runner and reports (``bench``)."""
