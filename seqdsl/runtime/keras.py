"""The run-time code of the Keras 3 models seqdsl generates.

A generated module imports what it uses from here
(``from seqdsl.runtime.keras import LengthsToMask, MaskedLSTM``); ``seqdsl compile
--standalone`` copies the same definitions into the module instead
(:mod:`seqdsl.emit.standalone`). Everything here uses only ``numpy``, ``keras`` and
``keras.ops``, so it runs on Keras' TensorFlow, JAX and torch backends.

Every layer class is registered with
``keras.saving.register_keras_serializable(package="seqdsl")``: once this module is
imported (a generated module imports it), ``keras.models.load_model`` finds the
layers of a saved model by their names (``"seqdsl>MaskedLSTM"``). A standalone
module registers its own copies under the same names (the last one imported wins;
they are the same code).

docs/backend-keras.md explains each layer and why Keras' own layer does not do
(Keras' deviations from docs/semantics.md, cuDNN eligibility).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import keras
import numpy as np
from keras import layers, ops

from .common import (
    InputError,
    WeightsFileError,
    canonical_mapping,
    check_ids_values,
    check_inputs,
    check_lengths_values,
    check_mask_values,
    check_weight_keys,
    pad_inputs,
)

__all__ = [
    "ConcatMasks",
    "DropMask",
    "ExternLayer",
    "FlipTime",
    "LengthsToMask",
    "MaskAnd",
    "MaskedAttention",
    "MaskedAveragePooling1D",
    "MaskedConv1D",
    "MaskedGlobalAveragePooling1D",
    "MaskedGlobalMaxPooling1D",
    "MaskedGRU",
    "MaskedLSTM",
    "MaskedMaxPooling1D",
    "MaskedMultiHeadAttention",
    "PortableMultiHeadAttention",
    "MaskedNestedRNN",
    "MaskedRNN",
    "MaskedSimpleRNN",
    "MaskingMask",
    "MergeMaximum",
    "MergeMinimum",
    "MergeMultiply",
    "NestedRNN",
    "NonZeroMask",
    "NotEqualMask",
    "SeqdslModel",
    "TemporalSoftmax",
    "TemporalSplit",
    "TimeDistributed",
    "WindowMask",
    "WithMask",
    "and_masks",
    "concat_time_masks",
    "dropout_masks",
    "not_equal_mask",
    "pad_inputs",
]


# --------------------------------------------------------------------------
# masks


class _MaskLayer(keras.layers.Layer):
    """Base of the layers that compute masks: boolean outputs, which carry no
    Keras mask themselves. (Overriding compute_mask also makes Keras accept
    masked inputs here without warning that the mask is dropped.)"""

    def compute_mask(self, inputs, previous_mask=None):
        return None


@keras.saving.register_keras_serializable(package="seqdsl")
class LengthsToMask(_MaskLayer):
    """The mask of a `masked` input from its lengths: mask[b, t] = t < lengths[b]
    for side "post", t >= T - lengths[b] for side "pre"."""

    def __init__(self, side: str = "post", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.side = side

    def call(self, inputs, lengths):
        steps = ops.shape(inputs)[1]
        t = ops.arange(steps, dtype="int32")[None, :]
        n = ops.cast(lengths, "int32")[:, None]
        if self.side == "post":
            return ops.less(t, n)
        return ops.greater_equal(t, steps - n)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "side": self.side}


@keras.saving.register_keras_serializable(package="seqdsl")
class NonZeroMask(_MaskLayer):
    """The mask of Embedding(mask_zero=true): ids != 0."""

    def call(self, ids):
        return ops.not_equal(ids, 0)


@keras.saving.register_keras_serializable(package="seqdsl")
class MaskingMask(_MaskLayer):
    """The mask of Masking(mask_value): a step is valid when any of its features
    differs from mask_value (NaN never masks)."""

    def __init__(self, mask_value: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mask_value = mask_value

    def call(self, inputs):
        return ops.any(ops.not_equal(inputs, self.mask_value), axis=-1)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "mask_value": self.mask_value}


@keras.saving.register_keras_serializable(package="seqdsl")
class MaskAnd(_MaskLayer):
    """The mask of a merge: a step is valid where every masked input is valid.
    (Keras' merge layers OR the masks, and drop them when one input is unmasked.)"""

    def call(self, masks):
        out = masks[0]
        for m in masks[1:]:
            out = ops.logical_and(out, m)
        return out


@keras.saving.register_keras_serializable(package="seqdsl")
class ConcatMasks(_MaskLayer):
    """The mask of concat(..., axis=time): the parts' masks joined in time. An
    unmasked part is passed as its value (masked[i] false) and counts as all valid."""

    def __init__(self, masked: Sequence[bool] = (), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.masked = tuple(masked)

    def call(self, parts):
        masks = [
            p if is_mask else ops.ones(ops.shape(p)[:2], dtype="bool")
            for p, is_mask in zip(parts, self.masked, strict=True)
        ]
        return ops.concatenate(masks, axis=1)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "masked": list(self.masked)}


@keras.saving.register_keras_serializable(package="seqdsl")
class FlipTime(_MaskLayer):
    """The output mask of a go_backwards layer: its outputs are in reversed time
    order, and so is their mask (Keras keeps the input mask unflipped)."""

    def call(self, mask):
        return ops.flip(mask, axis=1)


def _window_mask(mask: Any, size: int, strides: int, dilation: int, padding: str) -> Any:
    """The output mask of a convolution or pooling window: with padding "valid" a
    step is valid iff its whole window is; with "same" and "causal" iff its
    anchor input step j * strides is (docs/semantics.md, section 3)."""
    if padding != "valid":
        return mask[:, ::strides]
    count = ops.conv(
        ops.cast(mask, "float32")[:, :, None],
        ops.ones((size, 1, 1), dtype="float32"),
        strides=strides,
        padding="valid",
        dilation_rate=dilation,
    )
    return ops.greater(count[:, :, 0], size - 0.5)


@keras.saving.register_keras_serializable(package="seqdsl")
class WindowMask(_MaskLayer):
    """The output mask of Conv1D / MaxPooling1D / AveragePooling1D on a masked input."""

    def __init__(
        self,
        size: int = 1,
        strides: int = 1,
        dilation: int = 1,
        padding: str = "valid",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.size, self.strides, self.dilation, self.padding = size, strides, dilation, padding

    def call(self, mask):
        return _window_mask(mask, self.size, self.strides, self.dilation, self.padding)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "size": self.size,
            "strides": self.strides,
            "dilation": self.dilation,
            "padding": self.padding,
        }


@keras.saving.register_keras_serializable(package="seqdsl")
class DropMask(keras.layers.Layer):
    """drop_mask: the same values, with no Keras mask attached (so that no later
    layer picks one up implicitly)."""

    def call(self, inputs):
        return ops.copy(inputs)

    def compute_mask(self, inputs, previous_mask=None):
        return None


@keras.saving.register_keras_serializable(package="seqdsl")
class WithMask(keras.layers.Layer):
    """The same values, carrying the given mask as their Keras mask: an output
    whose Keras mask would differ from its seqdsl mask (after a merge, a custom
    layer...) gets the right one, e.g. for the loss masking of fit()."""

    def call(self, inputs, mask=None):
        return ops.copy(inputs)

    def compute_mask(self, inputs, mask=None):
        return mask


# --------------------------------------------------------------------------
# merges that compute on every step, as seqdsl's merges do


def _reduce_inputs(op: Any, inputs: Sequence[Any]) -> Any:
    out = inputs[0]
    for x in inputs[1:]:
        out = op(out, x)
    return out


@keras.saving.register_keras_serializable(package="seqdsl")
class MergeMaximum(keras.layers.Maximum):
    """keras.layers.Maximum without Keras' substitution at masked steps (Keras 3
    replaces a masked input's value by another input's there, so max(a, b) gives a
    at the steps where b is masked): the maximum at every step. The merge's mask is
    computed by the generated code."""

    def _merge_function(self, inputs):
        return _reduce_inputs(ops.maximum, inputs)


@keras.saving.register_keras_serializable(package="seqdsl")
class MergeMinimum(keras.layers.Minimum):
    """keras.layers.Minimum without Keras' substitution at masked steps (see MergeMaximum)."""

    def _merge_function(self, inputs):
        return _reduce_inputs(ops.minimum, inputs)


@keras.saving.register_keras_serializable(package="seqdsl")
class MergeMultiply(keras.layers.Multiply):
    """keras.layers.Multiply without Keras' substitution at masked steps (Keras 3
    multiplies by 1 where an input is masked): the product at every step."""

    def _merge_function(self, inputs):
        return _reduce_inputs(ops.multiply, inputs)


# --------------------------------------------------------------------------
# layers that use the mask where Keras does not


@keras.saving.register_keras_serializable(package="seqdsl")
class MaskedConv1D(keras.layers.Conv1D):
    """keras.layers.Conv1D that zeroes the masked input steps first (Keras drops
    the mask with a warning and convolves the padding). Same weights and config."""

    def call(self, inputs, mask=None):
        if mask is not None:
            inputs = ops.where(mask[:, :, None], inputs, ops.zeros_like(inputs))
        return super().call(inputs)

    def compute_mask(self, inputs, mask=None):
        return None  # the output mask is computed by WindowMask


def _window_sum(x: Any, size: int, strides: int, padding: str) -> Any:
    """The sum over each pooling window of x [B, T, C], TensorFlow's windows (the
    padding of "same" adds zeros), as a depthwise convolution with a kernel of ones:
    Keras' torch backend repeats the edge value into asymmetric "same" padding."""
    kernel = ops.ones((size, x.shape[-1], 1), dtype=x.dtype)
    return ops.depthwise_conv(x, kernel, strides=strides, padding=padding)


@keras.saving.register_keras_serializable(package="seqdsl")
class MaskedMaxPooling1D(keras.layers.MaxPooling1D):
    """MaxPooling1D over the valid steps of each window, 0 where a window has none
    (Keras pools over the padding)."""

    def call(self, inputs, mask=None):
        if mask is None:
            return super().call(inputs)
        valid = ops.cast(mask, inputs.dtype)[:, :, None]
        low = ops.where(mask[:, :, None], inputs, ops.full_like(inputs, -np.inf))
        top = ops.max_pool(low, self.pool_size, self.strides, self.padding, self.data_format)
        count = _window_sum(valid, self.pool_size[0], self.strides[0], self.padding)
        return ops.where(ops.greater(count, 0), top, ops.zeros_like(top))

    def compute_mask(self, inputs, mask=None):
        return None  # the output mask is computed by WindowMask


@keras.saving.register_keras_serializable(package="seqdsl")
class MaskedAveragePooling1D(keras.layers.AveragePooling1D):
    """AveragePooling1D over the valid steps of each window, 0 where a window has
    none (Keras averages over the padding). Also used without a mask for
    padding="same", which it computes as TensorFlow does on every backend."""

    def call(self, inputs, mask=None):
        if mask is None and self.padding == "valid":
            return super().call(inputs)
        if mask is None:
            valid = ops.ones_like(inputs[:, :, :1])
        else:
            valid = ops.cast(mask, inputs.dtype)[:, :, None]
        args = (self.pool_size[0], self.strides[0], self.padding)
        total = _window_sum(inputs * valid, *args)
        count = _window_sum(valid, *args)
        some = ops.greater(count, 0)
        return ops.where(
            some, total / ops.where(some, count, ops.ones_like(count)), ops.zeros_like(total)
        )

    def compute_mask(self, inputs, mask=None):
        return None  # the output mask is computed by WindowMask


@keras.saving.register_keras_serializable(package="seqdsl")
class MaskedGlobalMaxPooling1D(keras.layers.GlobalMaxPooling1D):
    """GlobalMaxPooling1D over the valid steps, 0 for an empty row (Keras'
    GlobalMaxPooling1D takes no mask and lets the padding into the max)."""

    def call(self, inputs, mask=None):
        if mask is None:
            return super().call(inputs)
        low = ops.where(mask[:, :, None], inputs, ops.full_like(inputs, -np.inf))
        top = ops.max(low, axis=1, keepdims=self.keepdims)
        some = (
            ops.any(mask, axis=1)[:, None, None]
            if self.keepdims
            else ops.any(mask, axis=1)[:, None]
        )
        return ops.where(some, top, ops.zeros_like(top))

    def compute_mask(self, inputs, mask=None):
        return None


@keras.saving.register_keras_serializable(package="seqdsl")
class MaskedGlobalAveragePooling1D(keras.layers.GlobalAveragePooling1D):
    """GlobalAveragePooling1D over the valid steps, 0 for an empty row (Keras
    gives NaN there: 0 / 0)."""

    def call(self, inputs, mask=None):
        if mask is None:
            return super().call(inputs)
        valid = ops.cast(mask, inputs.dtype)[:, :, None]
        total = ops.sum(inputs * valid, axis=1, keepdims=self.keepdims)
        count = ops.sum(valid, axis=1, keepdims=self.keepdims)
        some = ops.greater(count, 0)
        return ops.where(
            some, total / ops.where(some, count, ops.ones_like(count)), ops.zeros_like(total)
        )

    def compute_mask(self, inputs, mask=None):
        return None


@keras.saving.register_keras_serializable(package="seqdsl")
class TemporalSoftmax(keras.layers.Layer):
    """Softmax over time at the valid steps of each row, per feature
    (max-subtracted); 0 at masked steps and for an empty row. The masking
    guide's TemporalSoftmax as it was meant (its version sums over the last
    axis, giving ones and NaN)."""

    def call(self, inputs, mask=None):
        valid = mask[:, :, None]
        top = ops.max(
            ops.where(valid, inputs, ops.full_like(inputs, -np.inf)), axis=1, keepdims=True
        )
        top = ops.where(ops.isfinite(top), top, ops.zeros_like(top))
        shifted = ops.where(valid, inputs - top, ops.zeros_like(inputs))
        e = ops.where(valid, ops.exp(shifted), ops.zeros_like(inputs))
        total = ops.sum(e, axis=1, keepdims=True)
        some = ops.greater(total, 0)
        return ops.where(some, e / ops.where(some, total, ops.ones_like(total)), ops.zeros_like(e))

    def compute_mask(self, inputs, mask=None):
        return None


@keras.saving.register_keras_serializable(package="seqdsl")
class TemporalSplit(keras.layers.Layer):
    """Splits the time axis into `parts` equal parts (the masking guide's layer).
    A mask is split by a second TemporalSplit applied to it."""

    def __init__(self, parts: int = 2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.parts = parts

    def call(self, inputs):
        return ops.split(inputs, self.parts, axis=1)

    def compute_output_spec(self, inputs):
        steps = inputs.shape[1]
        shape = (inputs.shape[0], None if steps is None else steps // self.parts, *inputs.shape[2:])
        return [keras.KerasTensor(shape, dtype=inputs.dtype) for _ in range(self.parts)]

    def compute_mask(self, inputs, previous_mask=None):
        return None  # the masks are split explicitly

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "parts": self.parts}


@keras.saving.register_keras_serializable(package="seqdsl")
class TimeDistributed(keras.layers.TimeDistributed):
    """keras.layers.TimeDistributed that also maps over the steps when the time axis is
    unknown while tracing (model.export(), tf.function with a None time axis). Keras'
    own (3.15) maps there over range(batch size) instead, so that the exported model
    returns as many steps as rows. Same weights and config."""

    def call(self, inputs, training=None, mask=None):
        if inputs.shape[1] is not None:  # a static time axis: Keras' Python loop
            return super().call(inputs, training=training, mask=mask)
        axes = [1, 0, *range(2, len(inputs.shape))]
        steps = ops.transpose(inputs, axes)
        if mask is not None:
            mask = ops.transpose(mask, [1, 0, *range(2, len(mask.shape))])

        def step(i):
            kwargs: dict[str, Any] = {}
            if self.layer._call_has_mask_arg and mask is not None:
                kwargs["mask"] = mask[i]
            if self.layer._call_has_training_arg:
                kwargs["training"] = training
            return self.layer.call(steps[i], **kwargs)

        outputs = ops.vectorized_map(step, ops.arange(ops.shape(steps)[0]))
        return ops.transpose(outputs, [1, 0, *range(2, len(outputs.shape))])


# --------------------------------------------------------------------------
# recurrent layers


def _steps_to_front(mask: Any, side: str) -> Any:
    """Per row, the source step of each position once the valid steps are moved
    to the front (in order) and the masked steps after them: [B, T] int32.
    Left padding ("pre") is rolled; gaps ("any") are compacted."""
    steps = ops.shape(mask)[1]
    t = ops.arange(steps, dtype="int32")[None, :]
    n = ops.sum(ops.cast(mask, "int32"), axis=1, keepdims=True)
    if side == "pre":
        return ops.mod(t + (steps - n), steps)
    count = ops.cumsum(ops.cast(mask, "int32"), axis=1)
    target = ops.where(mask, count - 1, n + t - count)  # where each step moves to
    return ops.cast(ops.argsort(target, axis=1), "int32")


class _MaskedRecurrent(keras.layers.RNN):
    """seqdsl's mask semantics around a Keras recurrent layer (docs/semantics.md).

    With a mask, the Keras layer always runs forwards on right-padded rows with
    no empty row, the only masks cuDNN accepts: the steps are read in reverse
    first for go_backwards, left padding is rolled to the right (mask_side
    "pre"), gaps are compacted (mask_side "any"), an empty row gets length 1.
    Its outputs are then put back in place: zeros at masked steps
    (masked_output "zero") or the last valid output ("carry"), on every device;
    an empty row gives 0 and keeps its initial state (also the state a stateful
    layer keeps). Without a mask it is the Keras layer itself. Weights and
    config are the Keras layer's, plus mask_side and masked_output."""

    go_backwards: bool
    return_state: bool

    def __init__(
        self, *args: Any, mask_side: str = "any", masked_output: str = "zero", **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.mask_side = mask_side
        self.masked_output = masked_output

    def call(self, sequences, initial_state=None, mask=None, training=False):
        if mask is None:
            return super().call(sequences, initial_state=initial_state, training=training)
        mask = ops.cast(mask, "bool")
        side, backwards, return_state = self.mask_side, self.go_backwards, self.return_state
        if backwards:  # read the steps in reverse order: flip them, then run forwards
            sequences, mask = ops.flip(sequences, axis=1), ops.flip(mask, axis=1)
            side = {"post": "pre", "pre": "post"}.get(side, side)
        lengths = ops.sum(ops.cast(mask, "int32"), axis=1)
        nonempty = ops.greater(lengths, 0)
        if side != "post":
            index = _steps_to_front(mask, side)
            sequences = ops.take_along_axis(sequences, index[:, :, None], axis=1)
        steps = ops.shape(mask)[1]
        right_padded = ops.less(
            ops.arange(steps, dtype="int32")[None, :], ops.maximum(lengths, 1)[:, None]
        )
        if initial_state is None:
            if self.stateful:
                initial_state = [ops.copy(v.value) for v in self.states]  # a snapshot
            else:
                initial_state = self.get_initial_state(ops.shape(sequences)[0])
        if not isinstance(initial_state, (list, tuple)):
            initial_state = [initial_state]
        self.go_backwards, self.return_state = False, True
        try:
            outputs, *states = super().call(
                sequences, initial_state=list(initial_state), mask=right_padded, training=training
            )
        finally:
            self.go_backwards, self.return_state = backwards, return_state
        if self.return_sequences:  # output t is the output after count[t] valid steps
            count = ops.cumsum(ops.cast(mask, "int32"), axis=1)
            index = ops.maximum(count - 1, 0)
            outputs = ops.take_along_axis(outputs, index[:, :, None], axis=1)
            keep = mask if self.masked_output == "zero" else ops.greater(count, 0)
            outputs = ops.where(keep[:, :, None], outputs, ops.zeros_like(outputs))
        else:
            outputs = ops.where(nonempty[:, None], outputs, ops.zeros_like(outputs))
        states = [
            ops.where(nonempty[:, None], s, ops.cast(s0, s.dtype))
            for s, s0 in zip(states, initial_state, strict=True)
        ]
        if self.stateful:
            for variable, s in zip(self.states, states, strict=True):
                variable.assign(s)
        return (outputs, *states) if return_state else outputs

    def compute_mask(self, inputs, mask=None):
        out = super().compute_mask(inputs, mask)
        if not (self.go_backwards and self.return_sequences):
            return out
        if isinstance(out, (list, tuple)):  # with return_state
            return [None if out[0] is None else ops.flip(out[0], axis=1), *out[1:]]
        return None if out is None else ops.flip(out, axis=1)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "mask_side": self.mask_side,
            "masked_output": self.masked_output,
        }


@keras.saving.register_keras_serializable(package="seqdsl")
class MaskedLSTM(_MaskedRecurrent, keras.layers.LSTM):
    """keras.layers.LSTM with seqdsl's mask handling (see _MaskedRecurrent)."""


@keras.saving.register_keras_serializable(package="seqdsl")
class MaskedGRU(_MaskedRecurrent, keras.layers.GRU):
    """keras.layers.GRU with seqdsl's mask handling (see _MaskedRecurrent)."""


@keras.saving.register_keras_serializable(package="seqdsl")
class MaskedSimpleRNN(_MaskedRecurrent, keras.layers.SimpleRNN):
    """keras.layers.SimpleRNN with seqdsl's mask handling (see _MaskedRecurrent)."""


@keras.saving.register_keras_serializable(package="seqdsl")
class StatefulBidirectional(keras.layers.Bidirectional):
    """keras.layers.Bidirectional around stateful layers: each direction carries its
    own states (Keras' behaviour). Only compute_mask differs: with return_state,
    Keras 3's multiplies a generator by 2 (a TypeError when the layer is called on
    a masked input); here the outputs' masks are followed by one None per state."""

    return_state: bool

    def compute_mask(self, inputs, mask):
        states = self.states
        if not self.return_state or states is None:
            return super().compute_mask(inputs, mask)
        self.return_state = False
        try:
            out = super().compute_mask(inputs, mask)
        finally:
            self.return_state = True
        outs = tuple(out) if isinstance(out, (list, tuple)) else (out,)
        return (*outs, *([None] * len(states)))


@keras.saving.register_keras_serializable(package="seqdsl")
class MaskedRNN(_MaskedRecurrent, keras.layers.RNN):
    """keras.layers.RNN with seqdsl's mask handling (see _MaskedRecurrent)."""


# --------------------------------------------------------------------------
# attention


@keras.saving.register_keras_serializable(package="seqdsl")
class MaskedAttention(keras.layers.Attention):
    """keras.layers.Attention where a query step with no valid key (value mask and
    causal mask) gets weights 0 and output 0 (Keras gives it the mean of the values),
    whose returned weights are those before dropout (Keras returns them after), and
    whose dropout keep-mask can be injected (dropout_masks)."""

    keep = None  # set by dropout_masks(): the keep-mask divided by 1 - rate

    def _apply_scores(self, scores, value, scores_mask=None, training=False):
        if scores_mask is not None:
            if len(scores_mask.shape) == 2:
                scores_mask = ops.expand_dims(scores_mask, axis=-2)
            scores = ops.where(scores_mask, scores, -1e9)
        weights = ops.softmax(scores, axis=-1)
        if scores_mask is not None:  # 0 for the masked keys, and for a row with none
            weights = ops.where(scores_mask, weights, 0.0)
        used = weights
        if training and self.dropout > 0:
            if self.keep is not None:
                used = weights * ops.cast(self.keep, weights.dtype)
            else:
                used = keras.random.dropout(weights, self.dropout, seed=self.seed_generator)
        return ops.matmul(used, value), weights


class _BroadcastBiasEinsumDense(keras.layers.EinsumDense):
    """keras.layers.EinsumDense whose bias is added by NumPy broadcasting on every
    Keras backend. Keras 3.15's TensorFlow ops.add(x1, x2) takes an x2 with a single
    dimension above 1 for a bias and calls tf.nn.bias_add on x1's channel axis: the
    last one, else axis 1 ("NCHW") when that is the one of the same size. A
    MultiHeadAttention projection with heads of size 1 ([B, T, heads, 1], bias
    [heads, 1]) then gets its bias on the time axis when T == heads, e.g.
    ops.add(np.zeros((1, 3, 3, 1)), np.arange(3.0).reshape(3, 1))[0, :, 0, 0] is
    [0, 1, 2] where NumPy gives [0, 0, 0]. Added as an operand of x's full shape,
    the bias cannot be mistaken for another axis's (the shortcut then only takes
    an x with a single dimension above 1, where it is that one)."""

    def call(self, inputs, training=None):
        x = ops.einsum(self.equation, inputs, self.kernel)
        if self.bias is not None:
            x = ops.add(x, ops.broadcast_to(self.bias, ops.shape(x)))
        if self.activation is not None:
            x = self.activation(x)
        return x


@keras.saving.register_keras_serializable(package="seqdsl")
class PortableMultiHeadAttention(keras.layers.MultiHeadAttention):
    """keras.layers.MultiHeadAttention with the same numbers on every Keras backend
    (the same weights and variable names as Keras' layer):

    - its projections add their biases by broadcasting (_BroadcastBiasEinsumDense):
      with key_dim or value_dim 1, Keras' TensorFlow backend adds the bias of a
      projection [B, T, heads, 1] on the time axis when T == heads;
    - with value_dim != key_dim it takes the explicit softmax path: Keras' fused path
      (ops.dot_product_attention) raises on the JAX backend when the values' size
      differs from the keys' (ValueError "value shape should be ..."). The explicit
      path gives the same numbers."""

    #: always the explicit softmax path (MaskedMultiHeadAttention)
    always_explicit = False

    def build(self, query_shape, value_shape, key_shape=None):
        super().build(query_shape, value_shape, key_shape)
        for dense in (self._query_dense, self._key_dense, self._value_dense, self._output_dense):
            dense.__class__ = _BroadcastBiasEinsumDense  # only its call differs

    def _compute_attention(
        self,
        query,
        key,
        value,
        attention_mask=None,
        training=None,
        return_attention_scores=False,
        use_causal_mask=False,
    ):
        # a subclass's _compute_attention gets the causal mask inside attention_mask
        explicit = (
            return_attention_scores or self.always_explicit or self._value_dim != self._key_dim
        )
        out, scores = super()._compute_attention(
            query, key, value, attention_mask, training, return_attention_scores=explicit
        )
        return out, scores if return_attention_scores else None


@keras.saving.register_keras_serializable(package="seqdsl")
class MaskedMultiHeadAttention(PortableMultiHeadAttention):
    """keras.layers.MultiHeadAttention always on its explicit softmax path, which gives
    a query step with no key to attend to (a masked query step, or no valid key)
    weights 0, so that its output is attention_output's bias. Keras' fused path
    (ops.dot_product_attention, taken without dropout and returned scores) gives it
    a uniform average instead. Its projections add their biases by broadcasting
    (PortableMultiHeadAttention)."""

    always_explicit = True


# --------------------------------------------------------------------------
# cell blocks with several inputs, or inputs / states / outputs of any shape


def and_masks(mask: Any) -> Any:
    """One mask for a layer with several inputs: valid where every given mask is."""
    if not isinstance(mask, (list, tuple)):
        return mask
    out = None
    for m in mask:
        if m is not None:
            out = m if out is None else ops.logical_and(out, m)
    return out


def _shape(size: Any) -> tuple[int, ...]:
    """A state_size / output_size entry (an int or a shape) as a shape tuple."""
    return tuple(size) if isinstance(size, (list, tuple)) else (size,)


@keras.saving.register_keras_serializable(package="seqdsl")
class _FlatCell(keras.layers.Layer):
    """A cell with several inputs, or with inputs, states or outputs of any shape, as
    keras.layers.RNN runs cells: one flat [B, F] input per step and flat [B, n]
    states. Each step is unpacked for the cell (its inputs as a list, its states in
    their shapes) and its outputs and new states are packed back. The cell's
    output_size is a list of shapes when it has several outputs. The packed output
    is also state 0 (Keras' JAX backend carries state 0 as the output of a masked
    step); NestedRNN hides it."""

    def __init__(self, cell, input_shapes=None, several_inputs=False, **kwargs):
        kwargs.setdefault("dtype", cell.dtype_policy)
        kwargs.setdefault("name", f"flat_{cell.name}")
        super().__init__(**kwargs)
        self.cell = cell
        self.several_outputs = isinstance(cell.output_size, list)
        outputs = cell.output_size if self.several_outputs else [cell.output_size]
        self.output_shapes = [_shape(s) for s in outputs]
        self.state_shapes = [_shape(s) for s in cell.state_size]
        self.output_size = sum(int(np.prod(s)) for s in self.output_shapes)
        self.state_size = [self.output_size, *(int(np.prod(s)) for s in self.state_shapes)]
        self.input_shapes = input_shapes  # the inputs' per-step shapes (NestedRNN.build)
        self.several_inputs = several_inputs

    def build(self, input_shape):
        if not self.cell.built:
            shapes = [(input_shape[0], *s) for s in self.input_shapes]
            self.cell.build(shapes if self.several_inputs else shapes[0])

    def call(self, inputs, states):
        sizes = np.cumsum([int(np.prod(s)) for s in self.input_shapes])[:-1].tolist()
        parts = ops.split(inputs, sizes, axis=-1) if sizes else [inputs]
        parts = [ops.reshape(p, (-1, *s)) for p, s in zip(parts, self.input_shapes, strict=True)]
        shaped = zip(states[1:], self.state_shapes, strict=True)  # state 0: the last output
        states = [ops.reshape(s, (-1, *t)) for s, t in shaped]
        outputs, new_states = self.cell(parts if self.several_inputs else parts[0], states)
        outputs = list(outputs) if self.several_outputs else [outputs]
        sizes = [int(np.prod(s)) for s in self.output_shapes]
        flat = [ops.reshape(o, (-1, n)) for o, n in zip(outputs, sizes, strict=True)]
        flat = flat[0] if len(flat) == 1 else ops.concatenate(flat, axis=-1)
        sizes = self.state_size[1:]
        new_states = [ops.reshape(s, (-1, n)) for s, n in zip(new_states, sizes, strict=True)]
        return flat, [flat, *new_states]

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "cell": keras.saving.serialize_keras_object(self.cell),
            "input_shapes": self.input_shapes,
            "several_inputs": self.several_inputs,
        }

    @classmethod
    def from_config(cls, config):
        cell = keras.saving.deserialize_keras_object(config.pop("cell"))
        return cls(cell, **config)


class _NestedSteps(keras.layers.RNN):
    """keras.layers.RNN for a cell block that Keras' RNN cannot run as it is: several
    inputs (a list of sequences [B, T, ...]), or inputs, states or outputs of more
    than one axis. The cell runs inside a _FlatCell; the sequences are packed into
    one [B, T, F] tensor, the initial states flattened, and the outputs and final
    states given back in the cell's shapes. Returns the output (a list of them when
    the cell has several), then the final states with return_state. The layer's mask
    is the AND of the inputs' masks."""

    def __init__(self, cell, *args, **kwargs):
        if not isinstance(cell, _FlatCell):
            cell = _FlatCell(cell)
        super().__init__(cell, *args, **kwargs)

    def build(self, sequences_shape, initial_state_shape=None):
        several = isinstance(sequences_shape[0], (list, tuple))
        shapes = list(sequences_shape) if several else [sequences_shape]
        self.cell.several_inputs = several
        self.cell.input_shapes = [tuple(s[2:]) for s in shapes]
        features = sum(int(np.prod(s[2:])) for s in shapes)
        super().build((shapes[0][0], shapes[0][1], features))

    def call(self, sequences, initial_state=None, mask=None, training=False):
        parts = list(sequences) if isinstance(sequences, (list, tuple)) else [sequences]
        batch, steps = ops.shape(parts[0])[0], ops.shape(parts[0])[1]
        parts = [  # the features' static size: a traced graph then knows it (model.export())
            p if len(p.shape) == 3 else ops.reshape(p, (batch, steps, int(np.prod(p.shape[2:]))))
            for p in parts
        ]
        flat = parts[0] if len(parts) == 1 else ops.concatenate(parts, axis=-1)
        if initial_state is not None:  # state 0 is the last output (see _FlatCell)
            last = ops.zeros((batch, self.cell.output_size), dtype=self.cell.compute_dtype)
            initial_state = [last, *(ops.reshape(s, (batch, -1)) for s in initial_state)]
        result = super().call(
            flat, initial_state=initial_state, mask=and_masks(mask), training=training
        )
        outputs, *states = result if self.return_state else [result]
        shapes = self.cell.output_shapes
        sizes = np.cumsum([int(np.prod(s)) for s in shapes])[:-1].tolist()
        pieces = ops.split(outputs, sizes, axis=-1) if sizes else [outputs]
        lead = tuple(ops.shape(outputs)[:-1])
        pieces = [ops.reshape(p, (*lead, *s)) for p, s in zip(pieces, shapes, strict=True)]
        if self.return_state:
            shaped = zip(states[1:], self.cell.state_shapes, strict=True)
            return (*pieces, *(ops.reshape(s, (-1, *t)) for s, t in shaped))
        return pieces if self.cell.several_outputs else pieces[0]

    def compute_output_shape(self, sequences_shape, initial_state_shape=None):
        first = sequences_shape[0] if isinstance(sequences_shape[0], (list, tuple)) else None
        batch, steps = (first or sequences_shape)[:2]
        lead = (batch, steps) if self.return_sequences else (batch,)
        outputs = [(*lead, *s) for s in self.cell.output_shapes]
        if self.return_state:
            return (*outputs, *[(batch, *s) for s in self.cell.state_shapes])
        return outputs if self.cell.several_outputs else outputs[0]

    def compute_mask(self, inputs, mask=None):
        mask = and_masks(mask)
        out = mask if self.return_sequences else None
        if out is not None and self.go_backwards:  # the outputs are in reversed time order
            out = ops.flip(out, axis=1)
        masks = [out] * len(self.cell.output_shapes)
        if self.return_state:
            return masks + [None] * len(self.cell.state_shapes)
        return masks if self.cell.several_outputs else masks[0]


@keras.saving.register_keras_serializable(package="seqdsl")
class NestedRNN(_NestedSteps, keras.layers.RNN):
    """keras.layers.RNN for a cell with several inputs or shaped states and outputs."""


@keras.saving.register_keras_serializable(package="seqdsl")
class MaskedNestedRNN(_NestedSteps, _MaskedRecurrent, keras.layers.RNN):
    """NestedRNN with seqdsl's mask handling (see _MaskedRecurrent)."""


# --------------------------------------------------------------------------
# extern layers


def not_equal_mask(inputs: Any, value: float) -> Any:
    """`generate(x != value)`: a step is valid where any of its values (beyond [B, T])
    differs from value."""
    valid = ops.not_equal(inputs, value)
    if len(valid.shape) > 2:
        valid = ops.any(valid, axis=tuple(range(2, len(valid.shape))))
    return valid


@keras.saving.register_keras_serializable(package="seqdsl")
class NotEqualMask(_MaskLayer):
    """The mask an extern layer declares with `mask: generate(x != value)`: a step is
    valid where its input differs from value (any of its values, beyond [B, T])."""

    def __init__(self, value: float = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.value = value

    def call(self, inputs):
        return not_equal_mask(inputs, self.value)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "value": self.value}


def concat_time_masks(inputs: Sequence[Any], masks: Sequence[Any]) -> Any:
    """The mask of inputs joined in time (an extern layer's `mask: concat`): their masks
    joined, an unmasked input counting as all valid; None when no input has a mask."""
    if all(m is None for m in masks):
        return None
    parts = []
    for x, m in zip(inputs, masks, strict=True):
        ones = ops.ones_like(x, dtype="bool")
        if len(ones.shape) > 2:
            ones = ops.all(ones, axis=tuple(range(2, len(ones.shape))))
        parts.append(ones if m is None else m)
    return ops.concatenate(parts, axis=1)


def _concrete(x: Any) -> np.ndarray | None:
    """x as a NumPy array, or None while tracing (no values yet)."""
    try:
        return np.asarray(ops.convert_to_numpy(x))
    except Exception:
        return None


@keras.saving.register_keras_serializable(package="seqdsl")
class ExternLayer(keras.layers.Layer):
    """Base of a generated module's extern layer classes. The implementation is
    resolved at construction: `externs` (name -> function) first, then the functions
    registered with @seqdsl.extern(name, backend="keras") by the modules the .seq file
    `use`s (imported at the top of the generated module); none is an ExternError. It
    is called as fn(*inputs, mask=..., weights={name: variable}, config={param: value},
    training=bool). The output masks follow the declaration (the subclass's
    compute_mask); the output types are the declared ones (declared_outputs: the
    module's EXTERNS) while the graph is built. With
    debug on (model.debug = True), every call checks the outputs against the
    declaration, and a mask the implementation returns against the declared one
    (in eager calls, where values exist)."""

    extern = ""  # the extern layer's name in the .seq file
    declaration = ""  # where it is declared
    #: the model's extern layers -> their declared outputs ((dtype, shape), ...)
    declared_outputs: Mapping[str, Any] = {}

    def __init__(
        self, externs: Mapping[str, Any] | None = None, debug: bool = False, **kwargs: Any
    ) -> None:
        from seqdsl.externs import get_extern

        super().__init__(**kwargs)
        self.impl = get_extern(self.extern, "keras", externs)
        self.debug = debug

    def run(self, inputs, mask, training, weights, config):
        several = isinstance(inputs, (list, tuple))
        args = list(inputs) if several else [inputs]
        if several:
            mask = tuple(mask) if isinstance(mask, (list, tuple)) else (mask,) * len(args)
        result: Any = self.impl.fn(
            *args, mask=mask, weights=weights, config=config, training=bool(training)
        )
        returned_mask = None
        if self.impl.returns_mask:
            result, returned_mask = result
        outputs = list(result) if isinstance(result, (list, tuple)) else [result]
        if self.debug:
            self.check(inputs, mask, outputs, returned_mask)
        return outputs if len(outputs) > 1 else outputs[0]

    def check(self, inputs, mask, outputs, returned_mask):
        from seqdsl.externs import ExternError, check_output_shapes

        who = f"{self.extern} (layer `{self.name}`)"
        declared = self.declared_outputs.get(self.name)
        if declared is not None:
            got = []
            for i, o in enumerate(outputs):
                dims = tuple(o.shape)  # None: unknown while tracing
                shape = declared[i][1] if i < len(declared) else ()
                if len(dims) == len(shape):
                    dims = tuple(d if g is None else g for g, d in zip(dims, shape, strict=True))
                got.append((keras.backend.standardize_dtype(o.dtype), dims))
            check_output_shapes(who, declared, got, self.declaration)
        if not self.impl.returns_mask:
            return
        want = self.compute_mask(inputs, mask)
        n = len(outputs)
        wants = list(want) if isinstance(want, (list, tuple)) else [want] * n
        if isinstance(returned_mask, (list, tuple)) and len(returned_mask) == n and n > 1:
            gots = list(returned_mask)
        else:
            gots = [returned_mask] * n
        for i, (g, w) in enumerate(zip(gots, wants, strict=True)):
            where = f"output {i + 1}: " if n > 1 else ""
            if (g is None) != (w is None):
                raise ExternError(
                    f"extern layer {who}: {where}the implementation returned "
                    f"{'no mask' if g is None else 'a mask'}, but the declaration "
                    f"({self.declaration}) gives {'none' if w is None else 'one'}"
                )
            g, w = _concrete(g), _concrete(w)
            if g is None or w is None:
                continue
            if g.shape != w.shape or not np.array_equal(g.astype(bool), w.astype(bool)):
                raise ExternError(
                    f"extern layer {who}: {where}the mask the implementation returned "
                    f"differs from the declaration's ({self.declaration})"
                )

    def compute_output_spec(self, inputs, mask=None, training=None):
        declared = self.declared_outputs.get(self.name)
        if declared is None:
            return super().compute_output_spec(inputs, mask=mask, training=training)
        first = inputs[0] if isinstance(inputs, (list, tuple)) else inputs
        specs = [
            keras.KerasTensor((first.shape[0], *shape[1:]), dtype=dtype)
            for dtype, shape in declared
        ]
        return specs if len(specs) > 1 else specs[0]


# --------------------------------------------------------------------------
# the model


def pad_batches(pads: Mapping[str, tuple[Any, ...]], raw: Sequence[Sequence[Any]]) -> Any:
    """The body of a generated module's pad(*raw): :func:`seqdsl.runtime.common.pad_inputs`
    (int32 lengths). Returns (batch, lengths) for one padded input, a tuple of such
    pairs for several."""
    out = pad_inputs(pads, raw)
    return out[0] if len(out) == 1 else tuple(out)


def _layers_before(tensors: Sequence[Any], known: set[int]) -> list[Any]:
    """The layers with weights that computed ``tensors`` (symbolic), back to the layers
    in ``known`` (ids) or the inputs, through each tensor's Keras history."""
    found: list[Any] = []
    seen: set[int] = set()
    stack = list(tensors)
    while stack:
        history = getattr(stack.pop(), "_keras_history", None)
        if history is None:
            continue
        layer, node_index = history[0], history[1]
        if id(layer) in seen or id(layer) in known:
            continue
        seen.add(id(layer))
        if layer.weights:
            found.append(layer)
        stack.extend(layer._inbound_nodes[node_index].input_tensors)
    return found


@keras.saving.register_keras_serializable(package="seqdsl")
class SeqdslModel(keras.Model):
    """Base of the functional keras.Model a generated build_model() returns: canonical
    weights, reset_states(), get_weights()/set_weights() in the order of a hand-written
    Keras twin, and the extern layers' debug switch. A generated subclass sets the
    tables below to its module's (and pad to its module's pad()).

    Deployment: fit()/evaluate() see the values of the outputs only (a `with mask`
    output's mask is left out of y_pred, and its Keras mask masks the loss);
    export() writes a SavedModel whose "serve" endpoint returns the outputs by name
    ({name: value, f"{name}_mask": mask})."""

    #: the .seq outputs in order: "name", or "name with mask" (returned as (value, mask))
    OUTPUTS: Sequence[str] = ()
    #: layer -> ((weight, shape), ...): canonical weights, Keras' layout and order
    WEIGHTS: Mapping[str, Sequence[tuple[str, Sequence[int]]]] = {}
    #: the layers with weights in the order of a hand-written twin's get_weights()
    TWIN_ORDER: Sequence[str] = ()
    #: stateful recurrent layers (reset_states)
    STATEFUL: Sequence[str] = ()
    #: layers called with `training=` in the .seq source: it wins over the model's flag
    FIXED_TRAINING: Sequence[str] = ()
    #: extern layers -> their declared outputs
    EXTERNS: Mapping[str, Any] = {}
    #: the Keras inputs as declared: name -> (dtype, dims), a symbol, a size or None per
    #: axis (a `masked` input's lengths: ("i32", (B,)); its mask: ("mask", (B, T)))
    DECLARED: Mapping[str, tuple[str, tuple[Any, ...]]] = {}
    #: the checks of values: ("lengths", lengths input, its input, nonempty),
    #: ("ids", input, input_dim, layer) and ("mask", layer or input, side, nonempty,
    #: where, hint) for a mask whose kind rests on a declaration
    CHECKS: Sequence[tuple[Any, ...]] = ()

    def __init__(self, *args: Any, unused: Sequence[Any] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: layers with weights that only compute values no output needs (`_u = x ->
        #: Dense(4)`): outside the functional graph, kept for their weights
        self._unused_layers = _layers_before(unused, {id(la) for la in self.layers})
        for name in self.FIXED_TRAINING:
            # the layer's node keeps its own `training=`; Keras would override it with the
            # model's flag (there is no public switch for this)
            self.get_layer(name)._call_context_args = set()
        if self.OUTPUTS:  # compile(): losses and metrics by .seq output, none for the masks
            self.output_names = [o.removesuffix(" with mask") for o in self.OUTPUTS]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Keras' call, after the structural checks of the inputs (check_inputs and the
        run-time constraints, the same as torch's and JAX's: shapes and dtypes only;
        an axis of unknown size while Keras traces is not compared). In an eager call the token ids are
        checked too (Keras' Embedding would read a negative id from the end of its
        table); in debug mode the lengths and the declared mask kinds as well."""
        if self.DECLARED and args:
            named = self.named_inputs(args[0])
            self.check_constraints(check_inputs(self.DECLARED, named))
            ids = [c[1] for c in self.CHECKS if c[0] == "ids"]
            if self.debug or ids:  # the values of the ids alone, outside debug mode
                values = self.concrete(named if self.debug else {n: named[n] for n in ids})
                if values is not None or self.debug:
                    self.check_values(values)
        return super().__call__(*args, **kwargs)

    def check_data(self, x: Any) -> None:
        """The structural check of the data given to fit(), evaluate(), predict() and
        the *_on_batch methods, before Keras traces a step function over batches
        whose sizes it may generalise to None (a tf.data.Dataset or a generator is
        left to the checks of each call)."""
        if not self.DECLARED or x is None:
            return
        if not isinstance(x, (Mapping, list, tuple)) and not hasattr(x, "shape"):
            return
        self.check_constraints(check_inputs(self.DECLARED, self.named_inputs(x)))

    def check_constraints(self, sizes: Mapping[str, Any]) -> None:
        """The checker's run-time constraints on the symbols' sizes (``T % 2 == 0``
        before a TemporalSplit(2), ``T >= 5`` before a valid window of 5), as torch's
        and JAX's: InputError naming the constraint, the sizes and the layer's line.
        A generated model with constraints overrides this; a symbol whose size is
        unknown while Keras traces (None) is absent from ``sizes``: not checked."""

    def fit(self, x: Any = None, *args: Any, **kwargs: Any) -> Any:
        self.check_data(x)
        return super().fit(x, *args, **kwargs)

    def evaluate(self, x: Any = None, *args: Any, **kwargs: Any) -> Any:
        self.check_data(x)
        return super().evaluate(x, *args, **kwargs)

    def predict(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        self.check_data(x)
        return super().predict(x, *args, **kwargs)

    def train_on_batch(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        self.check_data(x)
        return super().train_on_batch(x, *args, **kwargs)

    def test_on_batch(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        self.check_data(x)
        return super().test_on_batch(x, *args, **kwargs)

    def predict_on_batch(self, x: Any) -> Any:
        self.check_data(x)
        return super().predict_on_batch(x)

    def named_inputs(self, inputs: Any) -> dict[str, Any]:
        """The inputs of a call, by name: a dict as it is, a list in order, one array."""
        names = list(self.DECLARED)
        if isinstance(inputs, Mapping):
            missing = [n for n in names if n not in inputs]
            unknown = [str(n) for n in inputs if n not in self.DECLARED]
            if missing or unknown:
                raise InputError(
                    f"{self.name} takes the inputs {', '.join(names)}: "
                    + "; ".join(
                        ([f"missing {', '.join(missing)}"] if missing else [])
                        + ([f"unknown {', '.join(unknown)}"] if unknown else [])
                    )
                )
            return {n: inputs[n] for n in names}
        items = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        if len(items) != len(names):
            raise InputError(
                f"{self.name} takes {len(names)} input(s) ({', '.join(names)}), got {len(items)}"
            )
        return dict(zip(names, items, strict=True))

    @staticmethod
    def concrete(named: Mapping[str, Any]) -> dict[str, np.ndarray] | None:
        """NumPy copies of the inputs, or None while Keras traces (symbolic tensors)."""
        out = {}
        for name, x in named.items():
            if isinstance(x, keras.KerasTensor):
                return None
            try:
                out[name] = np.asarray(x)
            except Exception:  # a TensorFlow graph tensor, a tracer: no values here
                return None
        return out

    def check_values(self, values: Mapping[str, np.ndarray] | None) -> None:
        """Token ids in range (every eager call); in debug mode the lengths and the
        declared mask kinds (those computed by layers: a sub-model of the mask layers
        runs on the inputs)."""
        if values is None:
            raise InputError(
                "debug checks need concrete values: call the model on arrays "
                "(model(x)), or fit()/predict() with run_eagerly=True"
            )
        masks = [c for c in self.CHECKS if c[0] == "mask"]
        for check in self.CHECKS:
            if check[0] == "ids":
                _, name, input_dim, layer = check
                check_ids_values(values[name], input_dim, f"{layer}: input `{name}`")
            elif check[0] == "lengths" and self.debug:  # (debug: every input's values)
                _, name, of, nonempty = check
                check_lengths_values(of, values[name], values[of].shape[1], nonempty)
        if masks and self.debug:
            probe = keras.Model(self.inputs, [self.get_layer(c[1]).output for c in masks])
            found = probe([values[name] for name in self.DECLARED])
            found = found if isinstance(found, (list, tuple)) else [found]
            for (_, _, side, nonempty, where, hint), m in zip(masks, found, strict=True):
                check_mask_values(keras.ops.convert_to_numpy(m), side, nonempty, where, hint)

    def get_layer(self, name=None, index=None):
        """keras.Model.get_layer, which also finds the layers of unused values by name."""
        for layer in self._unused_layers if index is None else ():
            if layer.name == name:
                return layer
        return super().get_layer(name, index)

    def load_canonical(self, weights: Any) -> None:
        """Set every weight from {"layer/weight": array} (Keras' layout, docs/semantics.md),
        the (weights, metadata) of load_weights, or a weights file's
        path. All or nothing: every key and shape is checked before any weight changes
        (WeightsFileError naming the keys that differ or the shape)."""
        weights = canonical_mapping(weights)
        expected = [f"{layer}/{w}" for layer, specs in self.WEIGHTS.items() for w, _ in specs]
        check_weight_keys(expected, weights, self.name)
        staged = []
        for layer, specs in self.WEIGHTS.items():
            values = []
            for w, shape in specs:
                try:
                    value = np.asarray(weights[f"{layer}/{w}"], dtype=float)
                except (TypeError, ValueError) as e:
                    raise WeightsFileError(
                        f"weight {layer}/{w}: not an array of numbers ({e})"
                    ) from None
                if value.shape != tuple(shape):
                    raise WeightsFileError(
                        f"weight {layer}/{w}: shape {list(value.shape)}, but the model's is "
                        f"{list(shape)}"
                    )
                values.append(np.asarray(weights[f"{layer}/{w}"]))
            staged.append((self.get_layer(layer), values))
        for target, values in staged:
            target.set_weights(values)

    def canonical_weights(self) -> dict[str, np.ndarray]:
        """{"layer/weight": numpy array}, Keras' layout."""
        out = {}
        for layer, specs in self.WEIGHTS.items():
            for (w, _), value in zip(specs, self.get_layer(layer).get_weights(), strict=True):
                out[f"{layer}/{w}"] = value
        return out

    def get_weights(self) -> list[np.ndarray]:
        return [value for layer in self.TWIN_ORDER for value in self.get_layer(layer).get_weights()]

    def set_weights(self, weights: Sequence[Any]) -> None:
        weights = list(weights)
        sizes = [len(self.get_layer(layer).weights) for layer in self.TWIN_ORDER]
        if len(weights) != sum(sizes):
            raise ValueError(f"{self.name} has {sum(sizes)} weight arrays, got {len(weights)}")
        start = 0
        for layer, n in zip(self.TWIN_ORDER, sizes, strict=True):
            self.get_layer(layer).set_weights(weights[start : start + n])
            start += n

    def output_keys(self) -> list[str]:
        """The names of the flat outputs: each output's name, then f"{name}_mask" after a
        `with mask` output (the keys of the exported "serve" endpoint's dict)."""
        keys = []
        for o in self.OUTPUTS:
            name = o.removesuffix(" with mask")
            keys += [name, f"{name}_mask"] if o.endswith(" with mask") else [name]
        return keys

    def value_outputs(self, y_pred: Any) -> Any:
        """y_pred without the masks of the `with mask` outputs: the values, in order (one
        value alone). Each value keeps its Keras mask, which masks the loss in fit()."""
        if not self.OUTPUTS:
            return y_pred
        items = list(y_pred) if len(self.OUTPUTS) > 1 else [y_pred]
        values = [
            item[0] if o.endswith(" with mask") else item
            for o, item in zip(self.OUTPUTS, items, strict=True)
        ]
        return values[0] if len(values) == 1 else tuple(values)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Keras' loss on the values of the outputs (value_outputs): y, the losses and the
        metrics name one target per output, none for the masks."""
        y_pred = None if y_pred is None else self.value_outputs(y_pred)
        return super().compute_loss(x, y, y_pred, sample_weight, training)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        return super().compute_metrics(x, y, self.value_outputs(y_pred), sample_weight)

    def export(
        self,
        filepath: Any,
        format: str = "tf_saved_model",
        verbose: bool | None = None,
        input_signature: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Keras' export; a SavedModel's "serve" endpoint returns a flat dict of the
        outputs by name ({name: value, f"{name}_mask": mask}), since a SavedModel's
        signature cannot return the (value, mask) pairs of `with mask` outputs.
        input_signature defaults to the model's inputs (batch and time of any size)."""
        if format != "tf_saved_model" or not self.OUTPUTS:
            return super().export(filepath, format, verbose, input_signature, **kwargs)
        from keras.export import ExportArchive

        if input_signature is None:
            specs = [keras.InputSpec(shape=t.shape, dtype=t.dtype) for t in self.inputs]
            input_signature = [specs if len(specs) > 1 else specs[0]]
        keys = self.output_keys()

        def serve(inputs):
            flat = keras.tree.flatten(self(inputs, training=False))
            return dict(zip(keys, flat, strict=True))

        archive = ExportArchive()
        archive.track(self)
        archive.add_endpoint("serve", serve, input_signature, **kwargs)
        archive.write_out(filepath, verbose=True if verbose is None else verbose)

    def reset_states(self) -> None:
        """Zero the states of the stateful recurrent layers."""
        for layer in self.STATEFUL:
            self.get_layer(layer).reset_states()

    @property
    def debug(self) -> bool:
        """Debug mode (``build(..., debug=True)``, or set it): every call checks the
        values of the inputs too (lengths in range, the declared mask kinds), and the
        extern layers check their outputs against their declarations."""
        return bool(getattr(self, "_debug_values", False))

    @debug.setter
    def debug(self, on: bool) -> None:
        self._debug_values = bool(on)
        for name in self.EXTERNS:
            self.get_layer(name).debug = bool(on)


@contextlib.contextmanager
def dropout_masks(model: keras.Model, masks: Mapping[str, Any]) -> Iterator[None]:
    """Within the block, training calls use the given keep-masks (1 = keep) instead
    of random ones (reproducible runs, comparisons across backends). Keys:
    "{layer}" for Dropout and TimeDistributed(Dropout) (the shape of the layer's
    input), for SpatialDropout1D ([B, 1, F]: one mask for every step of a row) and
    for the attention weights of Attention [B, Tq, Tk] and MultiHeadAttention
    [B, heads, Tq, Tk]; "{layer}/input" [B, F] and
    "{layer}/recurrent" [B, U] for a recurrent layer's dropout and recurrent_dropout
    ("{layer}/forward/input", ... inside Bidirectional); one mask serves every gate.
    Kept values are divided by 1 - rate."""
    undo: list[tuple[Any, str, str | None]] = []
    try:
        for key, keep in masks.items():
            name, _, part = key.partition("/")
            layer = model.get_layer(name)
            if part:
                direction, _, part = part.rpartition("/")
                cell = (getattr(layer, f"{direction}_layer") if direction else layer).cell
                rate = cell.dropout if part == "input" else cell.recurrent_dropout
                value = ops.convert_to_tensor(
                    np.asarray(keep) / (1.0 - rate), dtype=cell.compute_dtype
                )
                count = getattr(cell, "dropout_mask_count", None)  # Keras' one mask per gate
                attr = "_dropout_mask" if part == "input" else "_recurrent_dropout_mask"
                reset = "reset_dropout_mask" if part == "input" else "reset_recurrent_dropout_mask"
                setattr(cell, attr, [value] * count if count else value)
                object.__setattr__(cell, reset, lambda: None)  # keep it for every call in the block
                undo.append((cell, reset, attr))
            elif isinstance(layer, layers.Attention):  # MaskedAttention: its `keep`
                value = np.asarray(keep) / (1.0 - layer.dropout)
                object.__setattr__(layer, "keep", ops.convert_to_tensor(value, layer.compute_dtype))
                undo.append((layer, "keep", None))
            else:
                if isinstance(layer, layers.MultiHeadAttention):
                    layer = layer._dropout_layer  # the Dropout on its attention weights
                rate = layer.layer.rate if isinstance(layer, layers.TimeDistributed) else layer.rate
                value = ops.convert_to_tensor(
                    np.asarray(keep) / (1.0 - rate), dtype=layer.compute_dtype
                )

                def call(inputs, training=False, mask=None, value=value):
                    return inputs * value if training else inputs

                object.__setattr__(layer, "call", call)
                undo.append((layer, "call", None))
        yield
    finally:
        for obj, method, attr in reversed(undo):
            object.__delattr__(obj, method)
            if attr is not None:
                setattr(obj, attr, None)
