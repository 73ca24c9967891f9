r"""Benchmark: data sets, models, methods, runner, reports (``captum-effattn bench``)."""
