r"""Benchmark: data sets, models, methods, runner and reports (``captum-effattn bench``)."""
