r"""Faithfulness metrics for token attributions, in the style of ``captum.metrics``.

- :func:`sufficiency`, :func:`necessity` (= :func:`comprehensiveness`): ERASER's
  erasure metrics, one value per example;
- :func:`aopc_sufficiency`, :func:`aopc_necessity`: their averages over several
  fractions, with the curve (:class:`AOPCResult`);
- :func:`token_perturb_func`: token-safe perturbations for
  :func:`captum.metrics.infidelity` and :func:`captum.metrics.sensitivity_max`;
- :func:`token_removal_attack`, :func:`minimal_necessary_size`,
  :func:`minimal_sufficient_size`: minimal necessary / sufficient token sets
  through :class:`captum.robust.MinParamPerturbation`.
"""

from captum_effattn.metrics._core.faithfulness import (
    AOPCResult,
    aopc_necessity,
    aopc_sufficiency,
    comprehensiveness,
    necessity,
    sufficiency,
)
from captum_effattn.metrics._core.minimal import (
    minimal_necessary_size,
    minimal_sufficient_size,
)
from captum_effattn.metrics._core.perturbation import (
    token_perturb_func,
    token_removal_attack,
)

__all__ = [
    "sufficiency",
    "necessity",
    "comprehensiveness",
    "aopc_sufficiency",
    "aopc_necessity",
    "token_perturb_func",
    "token_removal_attack",
    "minimal_necessary_size",
    "minimal_sufficient_size",
    "AOPCResult",
]
