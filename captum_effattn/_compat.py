r"""The one place that imports Captum's private helpers.

``captum._utils`` is not a public API and may move between releases; the
package's ``pyproject.toml`` bounds the Captum version, and everything else
imports these names from here.
"""

from typing import Any, Optional

from captum._utils.common import (  # noqa: F401
    _format_additional_forward_args,
    _format_output,
    _format_tensor_into_tuples,
    _is_tuple,
    _run_forward,
    _select_targets,
)
from captum._utils.typing import TargetType  # noqa: F401


def sklearn_ridge(alpha: float = 1.0) -> Optional[Any]:
    r"""Captum's scikit-learn Ridge surrogate for ``Lime``, or None when this
    Captum version does not have it (``Lime`` then uses its default)."""
    try:
        from captum._utils.models.linear_model import SkLearnRidge
    except ImportError:  # pragma: no cover - Captum moved it
        return None
    return SkLearnRidge(alpha=alpha)


__all__ = [
    "_format_additional_forward_args",
    "_format_output",
    "_format_tensor_into_tuples",
    "_is_tuple",
    "_run_forward",
    "_select_targets",
    "TargetType",
    "sklearn_ridge",
]
