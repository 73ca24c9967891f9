r"""Private implementation of :mod:`captum_effattn.metrics`; import from there."""
