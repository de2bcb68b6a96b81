"""The programs in examples/: they check clean, and their numbers are Keras' numbers.

Every example must check with no diagnostic at all (warnings included), via
the Python API and via the CLI. The seed guides' models report the parameter
counts printed in the guides, and every example with a straightforward Keras
twin reports the same total, trainable/non-trainable split and per-layer
counts as the twin built here from real ``keras.layers`` (symbolically, no
training). The twins name their layers with the example's layer names, so the
per-layer comparison also pins the automatic naming scheme.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import seqdsl
from seqdsl.dims import sym
from seqdsl.types import MaskType, TensorType

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
FILES = sorted(EXAMPLES.glob("*.seq"))
IDS = [f.stem for f in FILES]


def _load(stem: str) -> seqdsl.Program:
    return seqdsl.load(EXAMPLES / f"{stem}.seq")


def _tensor(prog: seqdsl.Program, name: str) -> TensorType:
    t = prog.model().types[name]
    assert isinstance(t, TensorType), (name, t)
    return t


# --------------------------------------------------------------------------
# every example checks clean


def test_there_are_examples() -> None:
    assert len(FILES) >= 15


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_example_checks_clean(path: Path) -> None:
    prog = seqdsl.load(path)
    assert prog.diagnostics == (), prog.render_diagnostics()
    assert len(prog.models) == 1
    assert prog.model().total_params > 0
    assert "Total params" in prog.summary()


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_example_has_header(path: Path) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    header = []
    for line in lines:
        if not line.startswith("#"):
            break
        header.append(line)
    assert len(header) >= 4, f"{path.name}: start with a header comment of several lines"
    text = "\n".join(header)
    assert path.name in text
    assert re.search(r"\b00[23]\b", text), f"{path.name}: name the seed guide (002 or 003)"


def test_cli_check_all_examples() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "seqdsl", "check", *map(str, FILES)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"ok: {len(FILES)} file(s), {len(FILES)} model(s), 0 warning(s)" in r.stdout


def test_cli_summary_all_examples() -> None:
    # one interpreter for every file: `seqdsl summary` takes one file per run
    code = (
        "import sys\n"
        "from seqdsl.cli import main\n"
        "rcs = [main(['summary', f]) for f in sys.argv[1:]]\n"
        "print('RCS', rcs)\n"
        "sys.exit(max(rcs))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, *map(str, FILES)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stderr == "", r.stderr  # no warnings
    assert r.stdout.count("Total params:") == len(FILES)
    for path in FILES:
        assert f"({path})" in r.stdout


# --------------------------------------------------------------------------
# Keras twins


@pytest.fixture(scope="module")
def keras() -> ModuleType:
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return pytest.importorskip("keras")


Twin = Callable[[Any], Any]


def _sentiment(keras: Any) -> Any:
    L = keras.layers
    tokens = keras.Input((None,), dtype="int32")
    x = L.Embedding(5000, 16, mask_zero=True, name="x_embedding")(tokens)
    x = L.LSTM(32, name="x_lstm")(x)
    return keras.Model(tokens, x)


def _rnn_guide_lstm(keras: Any) -> Any:
    L = keras.layers
    tokens = keras.Input((None,), dtype="int32")
    x = L.Embedding(input_dim=1000, output_dim=64, name="x_embedding")(tokens)
    x = L.LSTM(128, name="x_lstm")(x)
    return keras.Model(tokens, L.Dense(10, name="logits_dense")(x))


def _rnn_guide_gru_stack(keras: Any) -> Any:
    L = keras.layers
    tokens = keras.Input((None,), dtype="int32")
    x = L.Embedding(input_dim=1000, output_dim=64, name="x_embedding")(tokens)
    x = L.GRU(256, return_sequences=True, name="x_gru")(x)
    x = L.SimpleRNN(128, name="x_simple_rnn")(x)
    return keras.Model(tokens, L.Dense(10, name="x_dense")(x))


def _rnn_guide_encoder_decoder(keras: Any) -> Any:
    L = keras.layers
    encoder_input = keras.Input((None,))
    encoder_embedded = L.Embedding(1000, 64, name="encoder_embedded_embedding")(encoder_input)
    _, state_h, state_c = L.LSTM(64, return_state=True, name="encoder")(encoder_embedded)
    decoder_input = keras.Input((None,))
    decoder_embedded = L.Embedding(2000, 64, name="decoder_embedded_embedding")(decoder_input)
    decoder_output = L.LSTM(64, name="decoder")(decoder_embedded, initial_state=[state_h, state_c])
    out = L.Dense(10, name="output_logits_dense")(decoder_output)
    return keras.Model([encoder_input, decoder_input], out)


def _rnn_guide_bidirectional(keras: Any) -> Any:
    L = keras.layers
    x = keras.Input((5, 10))
    y = L.Bidirectional(L.LSTM(64, return_sequences=True), name="y_bidirectional")(x)
    y = L.Bidirectional(L.LSTM(32), name="y_bidirectional_1")(y)
    return keras.Model(x, L.Dense(10, name="y_dense")(y))


def _mnist(cell: bool) -> Twin:
    def build(keras: Any) -> Any:
        L = keras.layers
        rows = keras.Input((None, 28))
        if cell:
            x = L.RNN(L.LSTMCell(64), name="x_rnn")(rows)
        else:
            x = L.LSTM(64, name="x_lstm")(rows)
        x = L.BatchNormalization(name="x_batch_normalization")(x)
        return keras.Model(rows, L.Dense(10, name="x_dense")(x))

    return build


def _stateful(keras: Any) -> Any:
    L = keras.layers
    paragraph = keras.Input(batch_shape=(20, 10, 50))
    out = L.LSTM(64, stateful=True, name="output_state_lstm")(paragraph)
    return keras.Model(paragraph, out)


def _stateful_paragraphs(keras: Any) -> Any:
    L = keras.layers
    paragraph = keras.Input(batch_shape=(20, None, 50))
    outs = L.LSTM(64, stateful=True, return_state=True, name="lstm_layer")(paragraph)
    return keras.Model(paragraph, outs)


def _bilstm_tagger(keras: Any) -> Any:
    L = keras.layers
    frames = keras.Input((None, 40))
    x = L.Masking(mask_value=0.0, name="x_masking")(frames)
    x = L.Bidirectional(L.LSTM(64, return_sequences=True), name="x_bidirectional")(x)
    x = L.Dropout(0.3, name="x_dropout")(x)
    x = L.Bidirectional(
        L.LSTM(32, return_sequences=True), merge_mode="sum", name="x_bidirectional_1"
    )(x)
    tags = L.TimeDistributed(L.Dense(17, activation="softmax"), name="tags_time_distributed")(x)
    return keras.Model(frames, tags)


def _seq2seq(keras: Any) -> Any:
    L = keras.layers
    source = keras.Input((None,), dtype="int32")
    target = keras.Input((None,), dtype="int32")
    src = L.Embedding(8000, 128, mask_zero=True, name="src_embedding")(source)
    _, h_fw, c_fw, h_bw, c_bw = L.Bidirectional(L.LSTM(128, return_state=True), name="encoder")(src)
    h = L.Concatenate(name="h_concat")([h_fw, h_bw])
    c = L.Concatenate(name="c_concat")([c_fw, c_bw])
    tgt = L.Embedding(6000, 128, mask_zero=True, name="tgt_embedding")(target)
    dec = L.LSTM(256, return_sequences=True, name="decoder")(tgt, initial_state=[h, c])
    return keras.Model([source, target], L.Dense(6000, name="logits_dense")(dec))


def _conv_frontend(keras: Any) -> Any:
    L = keras.layers
    frames = keras.Input((None, 40))
    x = L.Conv1D(64, 5, strides=2, activation="relu", name="feats_conv1d")(frames)
    x = L.Conv1D(64, 3, strides=2, activation="relu", name="feats_conv1d_1")(x)
    x = L.LSTM(128, name="encoded_lstm")(x)
    return keras.Model(frames, L.Dense(12, name="logits_dense")(x))


def _gru_pre_padding(keras: Any) -> Any:
    L = keras.layers
    tokens = keras.Input((100,), dtype="int32")
    x = L.Embedding(20000, 64, mask_zero=True, name="x_embedding")(tokens)
    x = L.GRU(64, name="x_gru")(x)
    return keras.Model(tokens, L.Dense(1, activation="sigmoid", name="score_dense")(x))


def _global_pool(keras: Any) -> Any:
    L = keras.layers
    tokens = keras.Input((None,), dtype="int32")
    # no mask_zero in the twin: Keras' Conv1D would only warn and drop it;
    # the parameter counts do not depend on it
    x = L.Embedding(10000, 64, name="x_embedding")(tokens)
    x = L.Conv1D(128, 5, padding="same", activation="relu", name="x_conv1d")(x)
    x = L.GlobalMaxPooling1D(name="x_global_max_pooling1d")(x)
    x = L.Dropout(0.5, name="x_dropout")(x)
    return keras.Model(tokens, L.Dense(4, name="x_dense")(x))


def _stacked(keras: Any) -> Any:
    L = keras.layers
    tokens = keras.Input((32,), dtype="int32")
    # no mask_zero: Keras' Flatten would warn and drop the mask (the example's `drop_mask`)
    h = L.Embedding(5000, 64, name="h_embedding")(tokens)
    for i in range(3):
        h = L.LSTM(128, return_sequences=True, name=f"h_r{i}_lstm")(h)
        h = L.Dropout(0.2, name=f"h_r{i}_dropout")(h)
    per_step = L.Dense(8, name="per_step_dense")(h)
    flat = L.Flatten(name="flat_flatten")(per_step)
    flat = L.Dense(2, name="flat_dense")(flat)
    return keras.Model(tokens, [per_step, flat])


def _temporal_softmax(keras: Any) -> Any:
    L = keras.layers
    tokens = keras.Input((None,), dtype="int32")
    x = L.Embedding(10, 32, mask_zero=True, name="scores_embedding")(tokens)
    x = L.Dense(1, name="scores_dense")(x)
    return keras.Model(tokens, x)


def _masked_floats(keras: Any) -> Any:
    L = keras.layers
    feats = keras.Input((None, 10))
    x = L.Masking(mask_value=0.0, name="x_masking")(feats)
    return keras.Model(feats, L.LSTM(32, name="x_lstm")(x))


def _composite_encoder(keras: Any) -> Any:
    # the expansion of the layer blocks, written out: the names pin the naming scheme
    L = keras.layers
    source = keras.Input((None,), dtype="int32")
    target = keras.Input((None,), dtype="int32")
    x = L.Embedding(1000, 64, mask_zero=True, name="src_embedding")(source)
    for i in range(2):
        x = L.LSTM(64, return_sequences=True, name=f"encoder_h_r{i}_lstm")(x)
        x = L.Dropout(0.1, name=f"encoder_h_r{i}_dropout")(x)
    _, h, c = L.LSTM(64, return_state=True, name="encoder_out_lstm")(x)
    y = L.Embedding(2000, 64, mask_zero=True, name="logits_decoder_e_embedding")(target)
    y = L.LSTM(64, return_sequences=True, name="logits_decoder_y_lstm")(y, initial_state=[h, c])
    head = "logits_decoder_probs_step_classifier_y_time_distributed"
    y = L.TimeDistributed(L.Dense(10, activation="softmax"), name=head)(y)
    return keras.Model([source, target], y)


def _attention_seq2seq(keras: Any) -> Any:
    L = keras.layers
    source = keras.Input((None,), dtype="int32")
    target = keras.Input((None,), dtype="int32")
    src = L.Embedding(1000, 32, mask_zero=True, name="src_embedding")(source)
    enc, h, c = L.LSTM(64, return_sequences=True, return_state=True, name="encoder")(src)
    tgt = L.Embedding(2000, 32, mask_zero=True, name="tgt_embedding")(target)
    dec = L.LSTM(64, return_sequences=True, name="decoder")(tgt, initial_state=[h, c])
    context = L.Attention(name="context_attention")([dec, enc])
    x = L.Concatenate(name="logits_concat")([dec, context])
    return keras.Model([source, target], L.Dense(2000, name="logits_dense")(x))


#: example -> Keras twin; layers the twin cannot express (TemporalSoftmax,
#: TemporalSplit, drop_mask) have no parameters and are left out of it.
TWINS: dict[str, Twin] = {
    "sentiment_lstm": _sentiment,
    "rnn_guide_lstm": _rnn_guide_lstm,
    "rnn_guide_gru_stack": _rnn_guide_gru_stack,
    "rnn_guide_encoder_decoder": _rnn_guide_encoder_decoder,
    "rnn_guide_bidirectional": _rnn_guide_bidirectional,
    "rnn_guide_mnist_lstm": _mnist(cell=False),
    "rnn_guide_mnist_rnn_cell": _mnist(cell=True),
    "rnn_guide_stateful": _stateful,
    "stateful_paragraphs": _stateful_paragraphs,
    "bilstm_tagger": _bilstm_tagger,
    "seq2seq_bidir_encoder": _seq2seq,
    "conv_frontend_lstm": _conv_frontend,
    "gru_pre_padding": _gru_pre_padding,
    "global_pool_classifier": _global_pool,
    "stacked_lstm_repeat": _stacked,
    "masking_temporal_softmax": _temporal_softmax,
    "masking_layer_float": _masked_floats,
    "composite_encoder": _composite_encoder,
    "attention_seq2seq": _attention_seq2seq,
}

#: the numbers printed in the seed guides: total and per layer
GUIDE_NUMBERS: dict[str, tuple[int, dict[str, int]]] = {
    "rnn_guide_lstm": (
        164_106,
        {"x_embedding": 64_000, "x_lstm": 98_816, "logits_dense": 1_290},
    ),
    "rnn_guide_gru_stack": (
        361_866,
        {"x_embedding": 64_000, "x_gru": 247_296, "x_simple_rnn": 49_280, "x_dense": 1_290},
    ),
    "rnn_guide_encoder_decoder": (
        258_698,
        {
            "encoder_embedded_embedding": 64_000,
            "decoder_embedded_embedding": 128_000,
            "encoder": 33_024,
            "decoder": 33_024,
            "output_logits_dense": 650,
        },
    ),
    "rnn_guide_bidirectional": (
        80_266,
        {"y_bidirectional": 38_400, "y_bidirectional_1": 41_216, "y_dense": 650},
    ),
    "rnn_guide_mnist_lstm": (24_714, {"x_lstm": 23_808, "x_batch_normalization": 256}),
    "rnn_guide_mnist_rnn_cell": (24_714, {"x_rnn": 23_808, "x_batch_normalization": 256}),
}


def _n_weights(weights: Any) -> int:
    n = 0
    for w in weights:
        size = 1
        for d in w.shape:
            size *= int(d)
        n += size
    return n


def test_twins_cover_the_examples() -> None:
    assert set(TWINS) <= set(IDS)
    assert set(GUIDE_NUMBERS) <= set(TWINS)


@pytest.mark.parametrize("stem", sorted(GUIDE_NUMBERS))
def test_guide_parameter_counts(stem: str) -> None:
    total, per_layer = GUIDE_NUMBERS[stem]
    m = _load(stem).model()
    assert m.total_params == total
    for name, n in per_layer.items():
        assert m.layer(name).params == n, name


@pytest.mark.parametrize("stem", sorted(TWINS))
def test_keras_twin(stem: str, keras: Any) -> None:
    m = _load(stem).model()
    twin = TWINS[stem](keras)
    assert m.total_params == twin.count_params()
    assert m.trainable_params == _n_weights(twin.trainable_weights)
    assert m.non_trainable_params == _n_weights(twin.non_trainable_weights)
    ours = {layer.name: (layer.trainable_params, layer.non_trainable_params) for layer in m.layers}
    theirs = {
        layer.name: (_n_weights(layer.trainable_weights), _n_weights(layer.non_trainable_weights))
        for layer in twin.layers
        if not isinstance(layer, keras.layers.InputLayer)
    }
    # every twin layer is in the example under the same name, with the same counts;
    # example layers missing from the twin have no parameters
    assert {k: ours.get(k) for k in theirs} == theirs
    for name in set(ours) - set(theirs):
        assert ours[name] == (0, 0), name
    for layer in twin.layers:
        if not isinstance(layer, keras.layers.InputLayer):
            assert m.layer(layer.name).params == layer.count_params(), layer.name


def test_batchnorm_split(keras: Any) -> None:
    for stem in ("rnn_guide_mnist_lstm", "rnn_guide_mnist_rnn_cell"):
        m = _load(stem).model()
        assert (m.trainable_params, m.non_trainable_params) == (24_586, 128)
        bn = m.layer("x_batch_normalization")
        assert (bn.trainable_params, bn.non_trainable_params) == (128, 128)


# --------------------------------------------------------------------------
# summary facts: kernels, mask kinds, time arithmetic


def _kernels(prog: seqdsl.Program, layer: str) -> dict[str, str]:
    info = prog.model().layer(layer)
    assert info.kernels is not None
    return {t: k.kernel for t, k in info.kernels.items()}


def test_sentiment_is_cudnn_everywhere() -> None:
    prog = _load("sentiment_lstm")
    assert _kernels(prog, "x_lstm") == {"keras": "cudnn", "torch": "cudnn", "jax": "cudnn"}
    emb = _tensor(prog, "x_embedding")
    assert emb.mask is not None
    assert (emb.mask.side, emb.mask.declared) == ("post", True)
    assert _tensor(prog, "x").mask is None


def test_explicit_mask_input() -> None:
    prog = _load("masking_explicit_mask")
    m = prog.model().types["m"]
    assert isinstance(m, MaskType) and m.kind.side == "any"
    assert _tensor(prog, "x").mask is None  # the embedding makes no mask of its own
    assert set(_kernels(prog, "out_lstm").values()) == {"cudnn+compact"}


def test_masking_layer_on_floats() -> None:
    prog = _load("masking_layer_float")
    t = _tensor(prog, "x_masking")
    assert t.mask is not None and (t.mask.side, t.mask.declared) == ("post", True)


def test_temporal_split_mask_kinds() -> None:
    prog = _load("masking_temporal_split")
    first, second = _tensor(prog, "first_half"), _tensor(prog, "second_half")
    assert first.mask is not None and second.mask is not None
    assert (first.mask.side, first.mask.nonempty) == ("post", True)
    assert (second.mask.side, second.mask.nonempty) == ("post", False)
    assert first.time == second.time == sym("T").scaled(1, 2)
    # second ++ first: a short row has gaps
    swapped = _tensor(prog, "swapped")
    assert swapped.mask is not None
    assert (swapped.mask.side, swapped.mask.nonempty) == ("any", True)
    assert swapped.time == sym("T")
    assert [str(c.dim) for c in prog.model().constraints] == ["T"]
    assert prog.model().constraints[0].divisor == 2
    assert _kernels(prog, "head_lstm")["torch"] == "cudnn"
    assert _kernels(prog, "both_lstm")["torch"] == "cudnn+compact"


def test_concat_on_time_keeps_post() -> None:
    prog = _load("masking_concat_time")
    joined = _tensor(prog, "joined")
    assert joined.mask is not None
    assert (joined.mask.side, joined.mask.nonempty) == ("post", True)
    assert joined.time == sym("T") + 4


def test_temporal_softmax_consumes_the_mask() -> None:
    prog = _load("masking_temporal_softmax")
    assert _tensor(prog, "scores").mask is not None
    assert _tensor(prog, "weights").mask is None


def test_pre_padding_rolls() -> None:
    prog = _load("gru_pre_padding")
    emb = _tensor(prog, "x_embedding")
    assert emb.mask is not None and emb.mask.side == "pre"
    assert _kernels(prog, "x_gru") == {"keras": "cudnn+roll", "torch": "cudnn+roll", "jax": "scan"}
    pad = prog.model().pads["tokens"]
    assert (pad.side, pad.maxlen, pad.truncate) == ("pre", 100, "pre")


def test_conv_frontend_length_arithmetic() -> None:
    prog = _load("conv_frontend_lstm")
    assert _tensor(prog, "frames").mask is not None
    feats = _tensor(prog, "feats")
    assert feats.mask is not None
    assert (feats.mask.side, feats.mask.nonempty) == ("post", False)
    T = sym("T")
    t1 = (T - 5).floordiv(2) + 1
    t2 = (t1 - 3).floordiv(2) + 1
    assert _tensor(prog, "feats_conv1d").time == t1
    assert feats.time == t2
    assert feats.time is not None
    for n in (7, 8, 9, 10, 100, 1001):
        l1 = (n - 5) // 2 + 1
        assert feats.time.evaluate({"T": n}) == (l1 - 3) // 2 + 1
    assert set(_kernels(prog, "encoded_lstm").values()) == {"cudnn"}


def test_tagger_returns_its_mask() -> None:
    prog = _load("bilstm_tagger")
    tags = _tensor(prog, "tags")
    assert tags.mask is not None and tags.mask.side == "post"
    assert [(o.name, o.with_mask) for o in prog.model().model.outputs] == [("tags", True)]
    assert tags.features is not None and tags.features.value == 17
    assert _kernels(prog, "x_bidirectional") == {"keras": "cudnn", "torch": "cudnn", "jax": "cudnn"}


def test_seq2seq_merged_states() -> None:
    prog = _load("seq2seq_bidir_encoder")
    for name in ("h", "c"):
        t = _tensor(prog, name)
        assert t.features is not None and t.features.value == 256
    logits = _tensor(prog, "logits")
    assert logits.mask is not None and logits.mask.side == "post"
    assert logits.time == sym("T")
    assert prog.model().layer("decoder").config["units"] == 256


def test_global_pool_drops_time() -> None:
    prog = _load("global_pool_classifier")
    conv = _tensor(prog, "x_conv1d")
    assert conv.mask is not None and conv.mask.side == "post"
    assert conv.time == sym("T")  # padding=same, stride 1
    pooled = _tensor(prog, "x_global_max_pooling1d")
    assert pooled.rank == 2 and pooled.mask is None


def test_repeat_names_and_drop_mask() -> None:
    prog = _load("stacked_lstm_repeat")
    names = [layer.name for layer in prog.model().layers]
    for i in range(3):
        assert f"h_r{i}_lstm" in names and f"h_r{i}_dropout" in names
    assert _tensor(prog, "per_step").mask is not None
    assert _tensor(prog, "flat_drop_mask").mask is None
    assert "drop_mask" in prog.summary()


def test_stateful_fixed_batch() -> None:
    prog = _load("rnn_guide_stateful")
    out = _tensor(prog, "output_state")
    assert out.batch is not None and out.batch.value == 20
    assert prog.model().layer("output_state_lstm").config["stateful"] is True


def test_stateful_paragraphs_masked_states() -> None:
    prog = _load("stateful_paragraphs")
    t = _tensor(prog, "paragraph")
    assert t.batch is not None and t.batch.value == 20 and t.time == sym("T")
    assert t.mask is not None and (t.mask.side, t.mask.nonempty) == ("post", False)
    for name in ("output_state", "state_h", "state_c"):
        out = _tensor(prog, name)
        assert out.rank == 2 and out.mask is None
    assert prog.model().layer("lstm_layer").config["stateful"] is True
    assert set(_kernels(prog, "lstm_layer").values()) == {"cudnn"}
