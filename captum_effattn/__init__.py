r"""captum_effattn: efficient attention for Captum.

Efficient attention is, for every attention head and query row, the
minimum-norm probability distribution that leaves the head's output (and so
the model's output) unchanged. This package computes it exactly and offers it,
with effective attention (Brunner et al., 2020), raw attention and attention
rollout, as Captum attribution methods, plus faithfulness metrics
(:mod:`captum_effattn.metrics`) and a benchmark (``captum-effattn bench``).
"""

from captum_effattn._core.adapters import supported_architectures
from captum_effattn._core.attribution import (
    AttentionResult,
    AttentionRollout,
    AttentionWeights,
    EffectiveAttention,
    EfficientAttention,
)
from captum_effattn._core.functional import (
    Certificate,
    attention_weights,
    effective_attention,
    efficient_attention,
)
from captum_effattn._core.support import SupportTestResult, attention_support_test

__version__ = "0.1.0"

__all__ = [
    "EfficientAttention",
    "EffectiveAttention",
    "AttentionWeights",
    "AttentionRollout",
    "AttentionResult",
    "Certificate",
    "efficient_attention",
    "effective_attention",
    "attention_weights",
    "supported_architectures",
    "attention_support_test",
    "SupportTestResult",
    "__version__",
]
