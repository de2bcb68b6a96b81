"""The layer catalogue: invariants, hand-computed parameter counts, kernel tables."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import seqdsl
from seqdsl.catalogue import CATALOGUE, KERNELS, MERGES, REQUIRED, TARGETS

ROOT = Path(__file__).resolve().parent.parent


def test_every_spec_is_well_formed() -> None:
    for name, spec in {**CATALOGUE, **MERGES}.items():
        assert spec.name == name
        names = [p.name for p in spec.params]
        assert len(names) == len(set(names)), name
        assert names[-2:] == ["name", "trainable"], name
        assert not set(spec.unsupported) & set(names), name
        for p in spec.params:
            if p.type == "choice":
                assert p.default is REQUIRED or p.default in p.choices, (name, p.name)
        assert spec.doc
        if spec.category == "recurrent":
            assert spec.kernels is not None and "initial_state" in spec.data_args


def test_layers_doc_is_up_to_date() -> None:
    r = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "gen_layers.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr


def params_of(body: str, inputs: str = "input x: f32[B, T, 10]") -> list[tuple[str, int, int]]:
    prog = seqdsl.loads(f"model M {{\n{inputs}\n{body}\n}}", "t.seq")
    return [
        (layer.kind, layer.trainable_params, layer.non_trainable_params)
        for layer in prog.model().layers
    ]


# Hand-computed from the Keras weight shapes (BACKENDS.md, "Weight layouts").
@pytest.mark.parametrize(
    ("layer", "expected"),
    [
        ("LSTM(7)", 4 * (10 * 7 + 7 * 7 + 7)),
        ("LSTM(7, use_bias=false)", 4 * (10 * 7 + 7 * 7)),
        ("GRU(7)", 3 * (10 * 7 + 7 * 7) + 2 * 3 * 7),
        ("GRU(7, reset_after=false)", 3 * (10 * 7 + 7 * 7) + 3 * 7),
        ("SimpleRNN(7)", 10 * 7 + 7 * 7 + 7),
        ("RNN(LSTMCell(7))", 4 * (10 * 7 + 7 * 7 + 7)),
        ("RNN(GRUCell(7, reset_after=false))", 3 * (10 * 7 + 7 * 7) + 3 * 7),
        ("Bidirectional(GRU(7))", 2 * (3 * (10 * 7 + 7 * 7) + 2 * 3 * 7)),
        ("Dense(3)", 10 * 3 + 3),
        ("Dense(3, use_bias=false)", 30),
        ("TimeDistributed(Dense(3))", 33),
        ("LayerNormalization()", 20),
        ("LayerNormalization(center=false)", 10),
        ("Conv1D(6, 3)", 3 * 10 * 6 + 6),
        ("Conv1D(6, 3, use_bias=false)", 3 * 10 * 6),
        ("MaxPooling1D(2)", 0),
    ],
)
def test_trainable_counts(layer: str, expected: int) -> None:
    ((_, trainable, non_trainable),) = params_of(f"y = x -> {layer}\noutput y")
    assert (trainable, non_trainable) == (expected, 0)


def test_batch_normalization_split_and_frozen_layers() -> None:
    assert params_of("y = x -> BatchNormalization()\noutput y") == [("BatchNormalization", 20, 20)]
    assert params_of("y = x -> Dense(3, trainable=false)\noutput y") == [("Dense", 0, 33)]


def test_embedding_count() -> None:
    assert params_of("y = t -> Embedding(1000, 64)\noutput y", "input t: i32[B, T]") == [
        ("Embedding", 64000, 0)
    ]


def kernels(layer: str, inputs: str = "input x: f32[B, T, 10] pad(post) masked") -> dict[str, str]:
    prog = seqdsl.loads(f"model M {{\n{inputs}\ny = x -> {layer}\noutput y\n}}", "t.seq")
    (info,) = prog.model().layers
    assert info.kernels is not None
    return {t: info.kernels[t].kernel for t in TARGETS}


@pytest.mark.parametrize(
    ("layer", "inputs", "expected"),
    [
        ("LSTM(4)", "input x: f32[B, T, 10]", ("cudnn", "cudnn", "cudnn")),
        ("LSTM(4)", "input x: f32[B, T, 10] pad(post) masked", ("cudnn", "cudnn", "cudnn")),
        ("LSTM(4)", "input x: f32[B, T, 10] pad(pre) masked", ("cudnn+roll",) * 3),
        ("LSTM(4)", "input x: f32[B, T, 10] masked", ("cudnn+compact",) * 3),
        ("GRU(4)", "input x: f32[B, T, 10]", ("cudnn", "cudnn", "scan")),
        ("GRU(4, reset_after=false)", "input x: f32[B, T, 10]", ("scan", "loop", "scan")),
        ("SimpleRNN(4)", "input x: f32[B, T, 10]", ("scan", "cudnn", "scan")),
        ("SimpleRNN(4, activation=relu)", "input x: f32[B, T, 10]", ("scan", "cudnn", "scan")),
        ("SimpleRNN(4, activation=sigmoid)", "input x: f32[B, T, 10]", ("scan", "loop", "scan")),
        ("LSTM(4, activation=relu)", "input x: f32[B, T, 10]", ("scan", "loop", "scan")),
        ("LSTM(4, recurrent_dropout=0.2)", "input x: f32[B, T, 10]", ("scan", "loop", "scan")),
        ("LSTM(4, use_bias=false)", "input x: f32[B, T, 10]", ("scan", "cudnn", "cudnn")),
        ("LSTM(4, unroll=true)", "input x: f32[B, 6, 10]", ("loop", "cudnn", "cudnn")),
        ("LSTM(4)", "input x: f64[B, T, 10]", ("cudnn", "cudnn", "scan")),
        ("Bidirectional(LSTM(4))", "input x: f32[B, T, 10] pad(pre) masked", ("cudnn+roll",) * 3),
        # reversed steps of a right-padded row are left-padded
        (
            "LSTM(4, go_backwards=true)",
            "input x: f32[B, T, 10] pad(post) masked",
            ("cudnn+roll",) * 3,
        ),
        (
            "LSTM(4, go_backwards=true)",
            "input x: f32[B, T, 10] pad(pre) masked",
            ("cudnn", "cudnn", "cudnn"),
        ),
    ],
)
def test_kernel_table(layer: str, inputs: str, expected: tuple[str, str, str]) -> None:
    got = kernels(layer, inputs)
    assert tuple(got[t] for t in TARGETS) == expected
    assert all(k in KERNELS for k in got.values())


def test_non_fastest_kernels_say_why() -> None:
    prog = seqdsl.loads(
        "model M {\ninput x: f32[B, T, 10]\ny = x -> GRU(4, reset_after=false)\noutput y\n}",
        "t.seq",
    )
    (info,) = prog.model().layers
    assert info.kernels is not None
    for t in TARGETS:
        assert info.kernels[t].reason and "reset_after" in info.kernels[t].reason
