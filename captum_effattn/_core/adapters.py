r"""Model adapters: where each architecture keeps its attention, found by name.

No model code is forked. For every supported family one :class:`ArchSpec`
entry says, relative to one transformer layer, which module returns
``(output, attention_probabilities)``, which module produces the value
vectors and which one is the output projection. Forward hooks then capture

* the attention probabilities ``A`` (batch, heads, n, n), still attached to
  the autograd graph so gradients with respect to them can be taken;
* the value projection output (batch, n, kv_heads * d_h), biases included;

and the output projection weight is read from the module. Adding a family is
one entry in :data:`ARCHITECTURES`.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import operator
import threading
import warnings
import weakref
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

__all__ = [
    "ArchSpec",
    "ARCHITECTURES",
    "ModelAdapter",
    "LayerCapture",
    "supported_architectures",
    "unwrap_model",
    "eval_mode",
    "embedding_rows",
    "check_device",
    "check_model_device",
    "check_positional_arguments",
]


@dataclass(frozen=True)
class ArchSpec:
    r"""Where one architecture family keeps its attention.

    Attributes:
        layers (str): dotted path from ``model.base_model`` to the list of layers.
        attention (str): path from a layer to the module whose forward returns
                    ``(output, attention_probabilities, ...)``.
        value (str): path from a layer to the value projection module.
        output (str): path from a layer to the output projection module.
        projected (bool): True when the attention module's output already went
                    through the output projection (DistilBERT, GPT-2, Llama).
        value_chunk (int or None): for fused ``qkv`` projections, the value is
                    chunk ``value_chunk`` of 3 along the last dimension.
        conv1d (bool): GPT-2's ``Conv1D`` stores weights as (in, out).
        causal (bool): decoder attention (row i sees keys j <= i).
        position_offset (bool): position ids start after the padding id
                    (RoBERTa's ``pad_token_id + 1``), so the model reads
                    ``max_position_embeddings - pad_token_id - 1`` tokens
                    at most (512 for roberta-base, not 514).
    """

    layers: str
    attention: str
    value: str
    output: str
    projected: bool = False
    value_chunk: Optional[int] = None
    conv1d: bool = False
    causal: bool = False
    position_offset: bool = False


_BERT_LIKE = ArchSpec(
    layers="encoder.layer",
    attention="attention.self",
    value="attention.self.value",
    output="attention.output.dense",
)
_ROBERTA_LIKE = replace(_BERT_LIKE, position_offset=True)

#: model_type (``model.config.model_type``) -> :class:`ArchSpec`.
ARCHITECTURES: Dict[str, ArchSpec] = {
    "bert": _BERT_LIKE,
    "roberta": _ROBERTA_LIKE,
    "xlm-roberta": _ROBERTA_LIKE,
    "electra": _BERT_LIKE,
    "camembert": _ROBERTA_LIKE,
    "distilbert": ArchSpec(
        layers="transformer.layer",
        attention="attention",
        value="attention.v_lin",
        output="attention.out_lin",
        projected=True,
    ),
    "gpt2": ArchSpec(
        layers="h",
        attention="attn",
        value="attn.c_attn",
        output="attn.c_proj",
        projected=True,
        value_chunk=2,
        conv1d=True,
        causal=True,
    ),
    "llama": ArchSpec(
        layers="layers",
        attention="self_attn",
        value="self_attn.v_proj",
        output="self_attn.o_proj",
        projected=True,
        causal=True,
    ),
}
ARCHITECTURES["mistral"] = ARCHITECTURES["llama"]
ARCHITECTURES["qwen2"] = ARCHITECTURES["llama"]


def architecture_spec(config: Any, name: str = "the model") -> ArchSpec:
    r"""The :class:`ArchSpec` of a model's ``config.model_type``; a
    ``ValueError`` that lists the supported types for any other (``name``
    says which model in the message)."""
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise ValueError(
            f"unsupported architecture {model_type!r} ({name}); supported model "
            f"types: {', '.join(supported_architectures())}. Adding a family is "
            "one ArchSpec entry in captum_effattn._core.adapters.ARCHITECTURES."
        )
    return ARCHITECTURES[model_type]


def max_positions(config: Any) -> Optional[int]:
    r"""How many tokens a model of ``config`` can embed, or None when its
    config does not say: its position embeddings, less the offset of
    families whose positions start after the padding id (RoBERTa's
    ``create_position_ids``: ``pad_token_id + 1``)."""
    positions = getattr(config, "max_position_embeddings", None) or getattr(
        config, "n_positions", None
    )
    if not isinstance(positions, int):
        return None
    spec = ARCHITECTURES.get(getattr(config, "model_type", None))
    if spec is not None and spec.position_offset:
        positions -= (getattr(config, "pad_token_id", None) or 0) + 1
    return positions


def supported_architectures() -> List[str]:
    r"""The ``model_type`` values that have an adapter.

    Returns:
        list of str: sorted ``config.model_type`` names; a model of another
        type is refused with an error that lists them.

    Examples::

        >>> from captum_effattn import supported_architectures
        >>> "bert" in supported_architectures()
        True
    """
    return sorted(ARCHITECTURES)


@dataclass
class LayerCapture:
    r"""What the hooks captured for one layer in one forward pass.

    Attributes:
        weights (Tensor): attention probabilities (batch, heads, n, n).
        values (Tensor): value vectors per value head (batch, kv_heads, n, d_h).
    """

    weights: Tensor
    values: Tensor


@dataclass
class _CallLog:
    r"""How often a module was called, and the arguments of its last call."""

    count: int = 0
    args: Optional[inspect.BoundArguments] = None
    #: calls from other threads than the recording one (not recorded)
    others: int = 0

    def hook(self, module: nn.Module, owner: Optional[int] = None) -> Any:
        r"""A forward pre-hook (``with_kwargs=True``) that logs ``module``'s
        calls, its arguments bound to the signature of its ``forward``; with
        ``owner``, only the calls made from that thread."""
        signature = inspect.signature(module.forward)

        def pre_hook(_m: nn.Module, args: Any, kwargs: Any) -> None:
            if owner is not None and _other_thread(owner):
                self.others += 1
                return
            self.count += 1
            try:
                self.args = signature.bind(*args, **kwargs)
            except TypeError:
                self.args = None

        return pre_hook


@dataclass
class _Recording:
    layers: Dict[int, Dict[str, Tensor]] = field(default_factory=dict)
    model: _CallLog = field(default_factory=_CallLog)
    # the inner base model (``model.bert`` ...), which a forward_func
    # calling ``model.forward(...)`` directly still calls
    base: _CallLog = field(default_factory=_CallLog)


def index_list(values: Any, name: str) -> List[int]:
    r"""A list of ints from an int, a sequence or an integer tensor (numpy
    and 0-d torch integers too); a ``TypeError`` that names ``name`` for
    anything else, bools included."""
    if isinstance(values, Tensor):
        if values.is_floating_point() or values.dtype == torch.bool:
            raise TypeError(
                f"{name} must be ints (integer indices), got dtype {values.dtype}"
            )
        values = values.reshape(-1).tolist()
    elif hasattr(values, "__array__") and hasattr(values, "dtype"):
        # a numpy array (any shape) or scalar: numpy's own ints, bools refused
        values = _numpy_indices(values, name)
    elif not isinstance(values, Sequence):
        values = [values]
    out = []
    for v in values:
        try:
            if isinstance(v, bool):
                raise TypeError
            out.append(operator.index(v))
        except TypeError:
            raise TypeError(
                f"{name} must be ints (integer indices), got {v!r} in {values!r}"
            ) from None
    return out


def _numpy_indices(values: Any, name: str) -> List[Any]:
    import numpy as np

    arr = np.asarray(values)
    if arr.dtype.kind not in "iu":
        raise TypeError(
            f"{name} must be ints (integer indices), got a numpy array of "
            f"dtype {arr.dtype}"
        )
    return arr.reshape(-1).tolist()


def _compiled_inner(model: Any) -> Optional[nn.Module]:
    r"""The eager module of a ``torch.compile``\ d one (``OptimizedModule``),
    else None."""
    inner = getattr(model, "_orig_mod", None)
    if type(model).__name__ == "OptimizedModule" and isinstance(inner, nn.Module):
        return inner
    return None


def unwrap_model(model: Any) -> Any:
    r"""The module inside ``torch.nn.DataParallel``,
    ``DistributedDataParallel`` and ``torch.compile`` wrappers (any depth);
    anything else as it is. Hooks and forward passes then act on the model
    itself: a data-parallel wrapper would scatter the batch over replicas,
    and the attention each replica records would cover only its share of the
    examples; compiled code skips hooks added after compilation, and its
    ``forward(*args, **kwargs)`` hides the attention mask's name."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
            continue
        inner = _compiled_inner(model)
        if inner is None:
            return model
        model = inner


#: One lock per model: the hooks that read or replace a model's attention
#: are the model's, so two threads that explain one model take turns (their
#: recordings, and the training flags that each saves and restores, would
#: otherwise mix). Reentrant: a nested call in one thread is told apart by
#: its call count instead.
_MODEL_LOCKS: "weakref.WeakKeyDictionary[nn.Module, threading.RLock]" = (
    weakref.WeakKeyDictionary()
)
_LOCKS_GUARD = threading.Lock()


def _model_lock(model: nn.Module) -> Any:
    with _LOCKS_GUARD:
        lock = _MODEL_LOCKS.get(model)
        if lock is None:
            lock = _MODEL_LOCKS[model] = threading.RLock()
        return lock


def _other_thread(owner: int) -> bool:
    r"""Whether a hook runs in another thread than ``owner``. Inside code
    that ``torch.compile`` traces (which cannot trace the thread id) it
    counts as the owner's: the compiled call runs in the caller's thread."""
    compiling = getattr(torch.compiler, "is_compiling", None)
    if compiling is not None and compiling():
        return False
    return threading.get_ident() != owner


def holding_model_lock(fn: Callable[..., Any]) -> Callable[..., Any]:
    r"""Decorator: ``fn(model, ...)`` runs holding ``model``'s lock (that of
    the module inside a ``DataParallel`` or ``torch.compile`` wrapper), for
    functions that run several hooked forward passes and switch the model's
    mode between them."""

    @functools.wraps(fn)
    def wrapper(model: Any, *args: Any, **kwargs: Any) -> Any:
        inner = unwrap_model(model) if isinstance(model, nn.Module) else None
        if inner is None:
            return fn(model, *args, **kwargs)
        with _model_lock(inner):
            return fn(model, *args, **kwargs)

    return wrapper


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[bool]:
    r"""Context manager: ``model`` in eval mode inside; yields whether any of
    its modules was in training mode. On exit every submodule gets its own
    flag back, so that a model in training mode with some submodules frozen in
    eval mode (or the reverse) comes back as it was, not with one flag for
    all."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield any(training for _, training in modes)
    finally:
        for module, training in modes:
            module.training = training


def embedding_rows(model: nn.Module) -> Optional[int]:
    r"""How many token ids ``model`` can embed: the number of rows of its input
    embedding table (``get_input_embeddings().num_embeddings``), else
    ``config.vocab_size``, else None. A tokenizer with a larger vocabulary
    (added tokens, or the tokenizer of another model) gives ids that the
    embedding cannot look up."""
    try:
        embeddings = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        embeddings = None
    rows = getattr(embeddings, "num_embeddings", None)
    if isinstance(rows, int):
        return rows
    return getattr(getattr(model, "config", None), "vocab_size", None)


def check_device(device: Any, name: str = "device") -> torch.device:
    r"""``device`` as a ``torch.device``, or a ``ValueError`` that says what to
    use instead of a raw torch error later on. The one check of every
    ``device`` the package takes (the functional API, the benchmark's model
    loading and runs, the command line's ``--device``).

    Refused: a string that names no device; ``"meta"`` (meta tensors have
    shapes but no values: no model can run there and no attention can be
    held, and torch would either fail deep inside the algebra or hand back a
    tensor of meta values); CUDA on a machine without it, or a CUDA index
    beyond the GPUs present; another accelerator type (``"mps"``...) that
    this machine cannot allocate on.

    Args:
        device (str or torch.device): the requested device.
        name (str, optional): how the message calls it, e.g. ``"--device"``.
                    Default: ``"device"``

    Returns:
        torch.device: the device.
    """
    use = f"{name} cpu" if name.startswith("-") else f"{name}='cpu'"
    shown = str(device) if isinstance(device, torch.device) else device
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(
            f"{name} {shown!r} is not a device: use {use}, or 'cuda' (or "
            "'cuda:K') on a machine with a GPU"
        ) from None
    if resolved.type == "meta":
        raise ValueError(
            f"{name} {shown!r}: meta tensors have shapes but no values, so no "
            f"model can run there and no attention values can be held; use {use} "
            "(or 'cuda' on a machine with a GPU)"
        )
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"{name} {shown!r}, but CUDA is not available on this machine; "
                f"use {use}"
            )
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(
                f"{name} {shown!r}: this machine has {count} CUDA device(s), "
                f"cuda:0 to cuda:{count - 1}"
            )
    elif resolved.type != "cpu":
        try:
            torch.empty(0, device=resolved)
        except (RuntimeError, AssertionError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise ValueError(
                f"{name} {shown!r} cannot be used on this machine ({first[:160]}); "
                f"use {use}"
            ) from None
    return resolved


def check_model_device(model: nn.Module) -> None:
    r"""Raise a ``ValueError`` when ``model``'s weights are on the meta device
    (a model built under ``torch.device("meta")`` or loaded with
    ``device_map="meta"``): they have no values, and every forward pass
    would fail with a raw torch error."""
    if any(p.is_meta for p in model.parameters()):
        raise ValueError(
            "the model's weights are on the meta device (shapes without values: "
            "built under torch.device('meta') or loaded with device_map='meta'?); "
            "load its weights and move it to 'cpu' or 'cuda', e.g. "
            "AutoModelForSequenceClassification.from_pretrained(path, "
            "attn_implementation='eager').to('cpu')"
        )


#: Arguments of a Hugging Face model's forward that take one value per token.
_TOKEN_ARGUMENTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


def check_positional_arguments(
    forward_func: Callable[..., Any], inputs: Tuple[Any, ...], extra: Tuple[Any, ...]
) -> None:
    r"""When ``forward_func`` is the model itself, the attribution classes and
    the metrics pass it the inputs and ``additional_forward_args``
    positionally; raise a clear error when a (batch, seq) tensor, such as the
    attention mask, would land on an argument that is not per token (GPT-2's
    second argument is its cache, not the attention mask)."""
    # only Hugging Face models (a .config) name their arguments as expected
    if not isinstance(forward_func, nn.Module) or not hasattr(forward_func, "config"):
        return
    if len(inputs) + len(extra) < 2:
        return
    try:
        signature = inspect.signature(forward_func.forward)
        bound = signature.bind(*inputs, *extra)
    except (TypeError, ValueError):
        return  # let the call itself raise
    shape = inputs[0].shape if isinstance(inputs[0], Tensor) else None
    # every argument after the ids: the mask may come in a tuple of inputs
    names = list(signature.parameters)[1 : len(inputs) + len(extra)]
    for name in names:
        value = bound.arguments.get(name)
        if (
            isinstance(value, Tensor)
            and value.shape == shape
            and name not in _TOKEN_ARGUMENTS
        ):
            raise ValueError(
                f"{type(forward_func).__name__}.forward is called with positional "
                f"arguments, and a tensor of shape {tuple(value.shape)} (the "
                f"attention mask?) would become its argument {name!r}. Pass a "
                "forward_func that names it, e.g. lambda ids, mask: "
                "model(ids, attention_mask=mask).logits (and model=model to the "
                "attribution classes)"
            )


def _get(module: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        module = getattr(module, part)
    return module


class ModelAdapter:
    r"""Reads attention, values and output projections of a Hugging Face model.

    Args:
        model (nn.Module): a transformers model (``PreTrainedModel``) of a
                    supported family, loaded with ``attn_implementation="eager"``.

    Raises:
        TypeError: when ``model`` is not a ``torch.nn.Module`` with a config.
        ValueError: for an unsupported architecture (the message lists the
                    supported ones), a model not using eager attention, or
                    one whose weights are on the meta device.
    """

    def __init__(self, model: nn.Module) -> None:
        model = unwrap_model(model)
        if not isinstance(model, nn.Module) or not hasattr(model, "config"):
            hint = ""
            if isinstance(model, nn.Module):
                hint = (
                    "; for a module that wraps one, pass the Hugging Face model "
                    "inside it as model="
                )
            raise TypeError(
                "expected a Hugging Face transformers model (a torch.nn.Module "
                f"with a .config), got {type(model).__name__}{hint}"
            )
        self.spec = architecture_spec(model.config, type(model).__name__)
        check_eager(model)
        check_model_device(model)
        self.model = model
        base = getattr(model, "base_model", model)
        try:
            self.layer_modules: List[nn.Module] = list(_get(base, self.spec.layers))
        except AttributeError:
            # a module of the user's with a copy of the inner model's config
            raise TypeError(
                f"{type(model).__name__} has a {model.config.model_type} config "
                f"but not its layers ({self.spec.layers}): is it a module that "
                "wraps a Hugging Face model? Pass the model inside it instead: "
                "EfficientAttention(forward_func, model=wrapper.bert), "
                "efficient_attention(wrapper.bert, ...)"
            ) from None
        self.num_layers = len(self.layer_modules)
        out0 = _get(self.layer_modules[0], self.spec.output)
        self.num_heads = int(
            getattr(model.config, "num_attention_heads", None)
            or getattr(model.config, "n_heads", None)
            or getattr(model.config, "n_head")
        )
        in_features = out0.weight.shape[0] if self.spec.conv1d else out0.weight.shape[1]
        self.head_dim = in_features // self.num_heads
        # BERT-like encoders built as decoders (is_decoder=True: BertLMHeadModel,
        # RobertaForCausalLM...) mask future keys: their attention module
        # says so, as every transformers attention module does
        attention0 = _get(self.layer_modules[0], self.spec.attention)
        self.causal = self.spec.causal or bool(getattr(attention0, "is_causal", False))
        self.max_positions = max_positions(model.config)
        # the ids the model can embed: the rows of its embedding table, which
        # an edited config can make differ from config.vocab_size (the
        # embedding then fails with an IndexError, not a message)
        self.vocab_size: Optional[int] = embedding_rows(model)

    @property
    def sliding_window(self) -> Optional[int]:
        r"""The attention window of a decoder with sliding-window attention
        (Mistral, Qwen2 with ``use_sliding_window``) in some layer, else None.
        Efficient attention lets row i use every key j <= i, so inputs longer
        than the window are refused (:func:`check_token_inputs`)."""
        cfg = self.model.config
        window = getattr(cfg, "sliding_window", None)
        if not self.causal or not window:
            return None
        if getattr(cfg, "use_sliding_window", True) is False:
            return None
        types = getattr(cfg, "layer_types", None)
        if types is not None and "sliding_attention" not in types:
            return None
        return int(window)

    @property
    def pools_first_token(self) -> bool:
        r"""True for the sequence classifier of an encoder family (BERT,
        RoBERTa...), whose pooler or head reads the first token, also when
        ``config.is_decoder=True`` makes its attention causal."""
        name = type(self.model).__name__
        return not self.spec.causal and name.endswith("ForSequenceClassification")

    def default_query(self, input_ids: Tensor, key_mask: Tensor) -> Tensor:
        r"""The row each example's classifier reads, ``(batch, 1)``: the
        token a decoder's sequence classifier pools
        (:meth:`pooled_positions`), else the last real token for other
        decoders, else the first real token ([CLS], with right or left
        padding).

        Args:
            input_ids (Tensor): ``(batch, n)`` token ids.
            key_mask (Tensor): bool ``(batch, n)``, True for real tokens.

        Raises:
            ValueError: a decoder classifier that would pool a position the
                        mask marks as padding (its ``config.pad_token_id`` is
                        not the id the inputs are padded with).
        """
        b, n = key_mask.shape
        pos = torch.arange(n, device=key_mask.device).expand(b, n)
        pooled = self.pooled_positions(input_ids)
        if pooled is not None:  # the token a decoder's classifier reads
            pooled = pooled.unsqueeze(1)
            padded = (~key_mask.gather(1, pooled)).nonzero()[:, 0].tolist()
            if padded:
                pad = getattr(self.model.config, "pad_token_id", None)
                raise ValueError(
                    f"the classifier reads example(s) {padded} at a position "
                    "that the attention mask marks as padding: Hugging Face "
                    "pools the last token whose id is not "
                    f"config.pad_token_id ({pad!r}), "
                    "so the padding of these inputs holds another id. Set "
                    "model.config.pad_token_id = tokenizer.pad_token_id, or "
                    "pass query= the position to read"
                )
            return pooled
        if self.causal and not self.pools_first_token:
            # the last real token
            return torch.where(key_mask, pos, -1).amax(1).unsqueeze(1)
        # the first real token: [CLS], with right or left padding
        return torch.where(key_mask, pos, n).amin(1).unsqueeze(1)

    def pooled_positions(self, input_ids: Tensor) -> Optional[Tensor]:
        r"""The position whose hidden state a decoder's sequence classifier
        (``GPT2ForSequenceClassification``, ``LlamaForSequenceClassification``
        ...) reads, one per example, else None (an encoder, or a decoder
        model of another kind).

        Hugging Face pools the rightmost token whose id is not
        ``config.pad_token_id`` (the last position when there is none), not
        the last token of the attention mask: with the padding token set to
        the end-of-text token, as tokenizers without one are often set up,
        a text that ends with that token is read at the token before it.
        """
        if not self.spec.causal:
            return None
        if not type(self.model).__name__.endswith("ForSequenceClassification"):
            return None
        config = self.model.config
        text_config = getattr(config, "get_text_config", None)
        config = text_config() if callable(text_config) else config
        pad = getattr(config, "pad_token_id", None)
        b, n = input_ids.shape
        if pad is None:
            return torch.full((b,), n - 1, dtype=torch.long, device=input_ids.device)
        index = torch.arange(n, device=input_ids.device)
        return (index * (input_ids != pad)).argmax(-1)

    # ------------------------------------------------------------------ weights
    def output_weights(self, layer: int) -> Tensor:
        r"""Per-head output projections ``W_O,h`` of a layer, (heads, d_h, d)."""
        w = _get(self.layer_modules[layer], self.spec.output).weight
        w = w if self.spec.conv1d else w.t()  # (heads * d_h, d)
        return w.reshape(self.num_heads, self.head_dim, w.shape[-1])

    def layer_indices(self, layers: Optional[Sequence[int]]) -> List[int]:
        r"""Normalise a layer selection: non-negative indices in the order
        given (negative indices count from the end); None means all layers.

        Raises:
            TypeError: ``layers`` is not an int or a sequence of ints.
            ValueError: an index out of range, a layer named twice, or no
                        layer at all.
        """
        if layers is None:
            return list(range(self.num_layers))
        if isinstance(layers, (str, bytes)):
            raise TypeError(
                f"layers must be an int or a list of ints, got {layers!r}; "
                "use None for all layers"
            )
        indices = index_list(layers, "layers")
        if not indices:
            raise ValueError("layers is empty: name at least one layer, or None")
        out: List[int] = []
        for layer in indices:
            if not -self.num_layers <= layer < self.num_layers:
                raise ValueError(
                    f"layer {layer} out of range for a model with "
                    f"{self.num_layers} layers"
                )
            if layer % self.num_layers in out:
                raise ValueError(
                    f"layer {layer} is named twice in {layers!r} (after negative "
                    "indices are counted from the end)"
                )
            out.append(layer % self.num_layers)
        return out

    # ------------------------------------------------------------------- hooks
    @contextlib.contextmanager
    def capture(
        self, layers: Optional[Sequence[int]] = None, grad: bool = False
    ) -> Iterator[_Recording]:
        r"""Context manager: hooks on the given layers for the forward passes run
        inside it. Hooks are removed and the model's training mode restored
        even when an exception is raised.

        Args:
            layers (list of int, optional): the layers to record. Default: all.
            grad (bool, optional): make the input embeddings require gradients
                        when nothing upstream does (a model with frozen
                        parameters), so that the recorded attention has a
                        graph to differentiate. Default: False

        Yields:
            a recording whose ``layers[l]`` holds ``"weights"`` and
            ``"values"`` after a forward pass, and ``call_args`` the arguments
            ``model``, the calls of the model itself (its arguments give the
            attention mask), and ``base``, those of its inner base model.
        """
        rec = _Recording()
        handles = []
        spec = self.spec
        modes = contextlib.ExitStack()
        # the hooks record this thread's forward passes only; another
        # explainer of the same model waits for this one to finish
        modes.enter_context(_model_lock(self.model))
        owner = threading.get_ident()
        try:
            if modes.enter_context(eval_mode(self.model)):
                warnings.warn(
                    "the model was in training mode (dropout on); switching it "
                    "to eval mode for the attribution and back afterwards",
                    stacklevel=3,
                )
        except BaseException:  # the warning made an error: nothing held
            modes.close()
            raise
        base = getattr(self.model, "base_model", None)
        if not isinstance(base, nn.Module) or base is self.model:
            base = None

        def embedding_hook(_m: nn.Module, _args: Any, output: Any) -> Any:
            if _other_thread(owner):
                return None
            if isinstance(output, Tensor) and not output.requires_grad:
                return output.detach().requires_grad_(True)
            return None

        def make_attention_hook(idx: int):
            def hook(_m: nn.Module, _args: Any, output: Any) -> None:
                if _other_thread(owner):
                    return
                weights = (
                    output[1] if isinstance(output, tuple) and len(output) > 1 else None
                )
                if weights is None:
                    raise ValueError(_EAGER_MESSAGE)
                rec.layers.setdefault(idx, {})["weights"] = weights

            return hook

        def make_value_hook(idx: int):
            def hook(_m: nn.Module, _args: Any, output: Tensor) -> None:
                if _other_thread(owner):
                    return
                v = output
                if spec.value_chunk is not None:
                    v = v.chunk(3, dim=-1)[spec.value_chunk]
                b, n, _ = v.shape
                v = v.reshape(b, n, -1, self.head_dim).transpose(1, 2)
                rec.layers.setdefault(idx, {})["values"] = v

            return hook

        try:
            for module, log in ((self.model, rec.model), (base, rec.base)):
                if module is not None:
                    handles.append(
                        module.register_forward_pre_hook(
                            log.hook(module, owner), with_kwargs=True
                        )
                    )
            embeddings = None
            if grad:
                try:
                    embeddings = self.model.get_input_embeddings()
                except (AttributeError, NotImplementedError):
                    embeddings = None
            if isinstance(embeddings, nn.Module):
                handles.append(embeddings.register_forward_hook(embedding_hook))
            for idx in self.layer_indices(layers):
                layer = self.layer_modules[idx]
                handles.append(
                    _get(layer, spec.attention).register_forward_hook(
                        make_attention_hook(idx)
                    )
                )
                handles.append(
                    _get(layer, spec.value).register_forward_hook(make_value_hook(idx))
                )
            yield rec
        finally:
            for h in handles:
                h.remove()
            modes.close()

    @contextlib.contextmanager
    def replace_attention(
        self, matrices: Dict[int, Tensor], query_mask: Optional[Tensor] = None
    ) -> Iterator[None]:
        r"""Run the model with the attention probabilities of some layers
        replaced, e.g. by efficient attention, to check output equivalence.

        The replacement is exact and architecture-independent: the attention
        output is linear in the probabilities, so the hook adds
        ``Σ_h (M_h − A_h) V_h`` (projected through ``W_O`` when the attention
        module's output is already projected) to the module's output.

        Args:
            matrices (dict): layer index -> (batch, heads, n, n) matrices.
            query_mask (Tensor, optional): bool (batch, n): replace only these
                        query rows and leave the model's own attention in the
                        others (e.g. padded rows, which the package's matrices
                        set to zero, but which a left-padded BERT still pools
                        from position 0). Default: None (every row)
        """
        handles = []
        values: Dict[int, Tensor] = {}
        owner = threading.get_ident()

        def make_value_hook(idx: int):
            def hook(_m: nn.Module, _args: Any, output: Tensor) -> None:
                if _other_thread(owner):
                    return
                v = output
                if self.spec.value_chunk is not None:
                    v = v.chunk(3, dim=-1)[self.spec.value_chunk]
                b, n, _ = v.shape
                values[idx] = v.reshape(b, n, -1, self.head_dim).transpose(1, 2)

            return hook

        def make_attention_hook(idx: int):
            def hook(_m: nn.Module, _args: Any, output: Any) -> Any:
                if _other_thread(owner):
                    return None
                weights = output[1]
                if weights is None:
                    raise ValueError(_EAGER_MESSAGE)
                v = expand_kv(values[idx], weights.shape[1])
                # the matrices may lie on another device (device= of the caller)
                m = matrices[idx].to(device=v.device, dtype=v.dtype)
                delta = (m - weights) @ v  # (b, h, n, d_h)
                if query_mask is not None:
                    keep = query_mask.to(device=delta.device, dtype=torch.bool)
                    delta = delta * keep[:, None, :, None].to(delta.dtype)
                b, h, n, dh = delta.shape
                delta = delta.transpose(1, 2).reshape(b, n, h * dh)
                if self.spec.projected:
                    w = self.output_weights(idx).reshape(h * dh, -1)
                    delta = delta @ w
                return (output[0] + delta.to(output[0].dtype),) + tuple(output[1:])

            return hook

        lock = _model_lock(self.model)
        lock.acquire()
        try:
            for idx in matrices:
                layer = self.layer_modules[idx]
                handles.append(
                    _get(layer, self.spec.value).register_forward_hook(
                        make_value_hook(idx)
                    )
                )
                handles.append(
                    _get(layer, self.spec.attention).register_forward_hook(
                        make_attention_hook(idx)
                    )
                )
            yield
        finally:
            for h in handles:
                h.remove()
            lock.release()


def expand_kv(values: Tensor, num_heads: int) -> Tensor:
    r"""Repeat value heads for grouped-query attention: (b, kv, n, d) ->
    (b, num_heads, n, d), query head h reading value head h // (num_heads/kv)."""
    kv = values.shape[1]
    if kv == num_heads:
        return values
    if num_heads % kv:
        raise ValueError(f"{num_heads} query heads cannot share {kv} value heads")
    return values.repeat_interleave(num_heads // kv, dim=1)


_EAGER_MESSAGE = (
    "the model returned no attention probabilities. Load it with "
    "attn_implementation='eager', e.g. AutoModelForSequenceClassification."
    "from_pretrained(path, attn_implementation='eager'), or call "
    "model.set_attn_implementation('eager'); SDPA and flash attention never "
    "materialise the attention matrix."
)


def check_eager(model: nn.Module) -> None:
    r"""Raise a ``ValueError`` unless the model computes eager attention."""
    impl = getattr(model.config, "_attn_implementation", None)
    if impl not in (None, "eager"):
        raise ValueError(f"attention implementation is {impl!r}: {_EAGER_MESSAGE}")
