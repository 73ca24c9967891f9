r"""captum_effattn: efficient attention for Captum."""

__version__ = "0.1.0"

__all__ = ["__version__"]
