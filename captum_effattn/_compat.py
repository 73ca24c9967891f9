r"""The one place that imports Captum's private helpers.

``captum._utils`` is not a public API and may move between releases; the
package's ``pyproject.toml`` bounds the Captum version, and everything else
imports these names from here.
"""

from captum._utils.common import (  # noqa: F401
    _format_additional_forward_args,
    _format_output,
    _format_tensor_into_tuples,
    _is_tuple,
    _run_forward,
    _select_targets,
)
from captum._utils.typing import TargetType  # noqa: F401

__all__ = [
    "_format_additional_forward_args",
    "_format_output",
    "_format_tensor_into_tuples",
    "_is_tuple",
    "_run_forward",
    "_select_targets",
    "TargetType",
]
