"""Attention and MultiHeadAttention on every backend: parity with the reference.

Each case is a small `.seq` program with one attention layer on masked inputs
(post, pre and gap masks on the query, the value and the key; a full row, padded
rows and an empty row, with the value's empty row under a valid query row, so
that some query steps have no valid key). The emitted PyTorch, JAX and Keras
(TensorFlow) modules run it on the same float32 weights, and every output and
mask is compared with the reference interpreter's float64 numbers (1e-5, masks
exactly); the outputs must not be all ~0. The reference itself is checked
against keras.layers.Attention / MultiHeadAttention in tests/test_reference.py.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")
keras = pytest.importorskip("keras")

import seqdsl  # noqa: E402
from seqdsl.checker import CheckedModel  # noqa: E402
from seqdsl.emit import emit, load_source  # noqa: E402
from seqdsl.padding import lengths_to_mask  # noqa: E402
from seqdsl.reference import run_reference  # noqa: E402

B, T, S = 4, 5, 6
TOL = 1e-5
# query rows: full, padded, padded, empty; value rows: full, padded, EMPTY, padded
Q_LENGTHS = np.array([T, 3, 2, 0])
V_LENGTHS = np.array([S, 2, 0, 4])
GAPS = {
    T: np.array([[1, 1, 1, 1, 1], [1, 0, 1, 0, 1], [0, 1, 1, 0, 0], [0, 0, 0, 0, 0]], bool),
    S: np.array(
        [[1, 1, 1, 1, 1, 1], [0, 1, 0, 0, 1, 0], [0, 0, 0, 0, 0, 0], [1, 0, 1, 1, 0, 1]], bool
    ),
}


@dataclass
class Case:
    id: str
    ctor: str  # the layer's constructor, named "att"
    q: str  # mask kind of each input: post, pre, gap or none
    v: str
    k: str | None = None  # None: no key input
    self_attention: bool = False  # the query is also the value
    training: bool = False
    nonempty: bool = False  # the value's rows are all nonempty
    feats: tuple[int, int, int] = (4, 4, 4)
    source: str = ""
    inputs: list[np.ndarray] = field(default_factory=list)
    lengths: dict[str, np.ndarray] = field(default_factory=dict)
    masks: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def scores(self) -> bool:
        return "return_attention_scores=true" in self.ctor


def _decl(name: str, steps: str, feats: int, kind: str, nonempty: bool = False) -> str:
    head = f"    input {name}: f32[B, {steps}, {feats}]"
    if kind in ("post", "pre"):
        return head + f" pad({kind}{', nonempty=true' if nonempty else ''}) masked"
    if kind == "gap":
        return head + " masked"
    return head


def make(case: Case, seed: int) -> Case:
    rng = np.random.default_rng(seed)
    fq, fv, fk = case.feats
    roles = [("q", "T", fq, case.q, Q_LENGTHS)]
    if not case.self_attention:
        roles.append(("v", "S", fv, case.v, V_LENGTHS))
    if case.k is not None:
        roles.append(("k", "S", fk, case.k, V_LENGTHS[::-1].copy()))
    lines = []
    for name, steps, feats, kind, lens in roles:
        nonempty = case.nonempty and name == "v"
        if nonempty:
            lens = np.maximum(lens, 1)
        lines.append(_decl(name, steps, feats, kind, nonempty))
        n = T if steps == "T" else S
        x = rng.normal(0.0, 1.0, (B, n, feats))
        if kind in ("post", "pre"):
            case.lengths[name] = lens
            x = np.where(lengths_to_mask(lens, n, kind)[..., None], x, 0.0)
        elif kind == "gap":
            mask = GAPS[n].copy()
            if nonempty:
                mask[:, 0] = True
            case.masks[name] = mask
        case.inputs.append(x)
    args = ["q", "q" if case.self_attention else "v"] + (["k"] if case.k is not None else [])
    results = ["y", "w"] if case.scores else ["y"]
    outs = ["y with mask" if case.q != "none" else "y"] + (["w"] if case.scores else [])
    call = f"{case.ctor}({', '.join(args)}" + (", training=true)" if case.training else ")")
    lines.append(f"    {', '.join(results)} = {call}")
    lines.append(f"    output {', '.join(outs)}")
    case.source = "model Att {\n" + "\n".join(lines) + "\n}\n"
    return case


CASES = [
    make(c, i)
    for i, c in enumerate(
        [
            Case("att_post", 'Attention(name="att")', "post", "post"),
            Case("att_scale_pre", 'Attention(use_scale=true, name="att")', "pre", "pre"),
            Case(
                "att_concat_gap_scores",
                'Attention(score_mode=concat, use_scale=true, return_attention_scores=true, name="att")',
                "gap",
                "gap",
            ),
            Case(
                "att_key_causal",
                'Attention(use_causal_mask=true, name="att")',
                "post",
                "pre",
                "gap",
            ),
            Case(
                "att_unmasked_query_scores",
                'Attention(return_attention_scores=true, name="att")',
                "none",
                "gap",
            ),
            Case(
                "att_self_causal",
                'Attention(use_causal_mask=true, name="att")',
                "pre",
                "pre",
                self_attention=True,
            ),
            Case(
                "att_nonempty_keras_layer", 'Attention(name="att")', "post", "post", nonempty=True
            ),
            Case(
                "att_dropout_training",
                'Attention(dropout=0.4, return_attention_scores=true, name="att")',
                "gap",
                "post",
                training=True,
            ),
            Case("mha_post", 'MultiHeadAttention(2, 3, name="att")', "post", "post"),
            Case(
                "mha_key_sizes",
                "MultiHeadAttention(num_heads=2, key_dim=3, value_dim=2, "
                'output_shape=5, name="att")',
                "pre",
                "gap",
                "post",
                feats=(4, 3, 5),
            ),
            Case(
                "mha_nobias_causal_scores",
                "MultiHeadAttention(3, 2, use_bias=false, "
                'use_causal_mask=true, return_attention_scores=true, name="att")',
                "gap",
                "post",
            ),
            Case("mha_unmasked", 'MultiHeadAttention(2, 4, name="att")', "none", "none"),
            Case(
                "mha_causal_only",
                'MultiHeadAttention(2, 4, use_causal_mask=true, name="att")',
                "none",
                "none",
                self_attention=True,
            ),
            Case(
                "mha_nonempty_keras_layer",
                'MultiHeadAttention(2, 2, name="att")',
                "none",
                "pre",
                nonempty=True,
            ),
            Case(
                "mha_dropout_training",
                'MultiHeadAttention(2, 3, dropout=0.3, name="att")',
                "post",
                "gap",
                "pre",
                training=True,
            ),
            # heads of size 1 with a bias, as many heads as steps (query T = 5, value
            # S = 6): Keras' TensorFlow ops.add put such a projection's bias on the time
            # axis (the runtime's PortableMultiHeadAttention, docs/backend-keras.md)
            Case(
                "mha_key_dim_1_unmasked",
                'MultiHeadAttention(5, 1, name="att")',
                "none",
                "none",
                feats=(3, 4, 4),
            ),
            Case(
                "mha_value_dim_1",
                'MultiHeadAttention(6, 2, value_dim=1, name="att")',
                "post",
                "pre",
            ),
        ]
    )
]


# --------------------------------------------------------------------------
# helpers


def rand_weights(m: CheckedModel, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        f"{layer.name}/{w.name}": rng.normal(0.0, 0.6, w.shape).astype(np.float32)
        for layer in m.layers
        for w in layer.weights
    }


def keep_masks(m: CheckedModel, case: Case) -> dict[str, np.ndarray]:
    """The dropout keep-masks of a training case: [B, Tq, Tk] or [B, heads, Tq, Tk]."""
    if not case.training:
        return {}
    layer = m.layer("att")
    shape = (B, T, T if case.self_attention else S)
    if layer.kind == "MultiHeadAttention":
        shape = (B, int(layer.config["num_heads"]), *shape[1:])  # type: ignore[call-overload]
    rng = np.random.default_rng(7)
    return {"att": (rng.random(shape) > 0.35).astype(np.float64)}


def flat(x: object) -> list[np.ndarray]:
    if isinstance(x, (tuple, list)):
        return [a for item in x for a in flat(item)]
    if isinstance(x, torch.Tensor):
        return [x.detach().cpu().numpy()]
    if isinstance(x, (np.ndarray, jax.Array)):
        return [np.asarray(x)]
    return [np.asarray(keras.ops.convert_to_numpy(x))]


def compare(got: object, want: Sequence[object], tol: float, what: str) -> float:
    """Every array against the reference's (masks exactly); the largest error."""
    g, w = flat(got), flat(list(want))
    assert len(g) == len(w), f"{what}: {len(g)} arrays, reference {len(w)}"
    worst = 0.0
    for i, (a, b) in enumerate(zip(g, w, strict=True)):
        assert a.shape == b.shape, f"{what} output {i}: shape {a.shape}, reference {b.shape}"
        if b.dtype == bool:
            assert a.dtype == bool and np.array_equal(a, b), f"{what}: mask {i} differs"
            continue
        assert np.isfinite(a).all(), f"{what} output {i}: not finite"
        err = float(np.max(np.abs(a.astype(np.float64) - b)))
        assert err <= tol * max(1.0, float(np.max(np.abs(b)))), f"{what} output {i}: {err:.3g}"
        worst = max(worst, err)
    return worst


def reference(case: Case, m: CheckedModel, w32: dict[str, np.ndarray]) -> tuple[object, ...]:
    w64 = {k: v.astype(np.float64) for k, v in w32.items()}
    ref = run_reference(m, w64, case.inputs, lengths=case.lengths, masks=case.masks,
                        training=case.training, dropout_masks=keep_masks(m, case))  # fmt: skip
    values = [a for a in flat(list(ref.outputs)) if a.dtype != bool]
    assert max(float(np.abs(a).max()) for a in values) > 1e-3, "outputs too small to compare"
    return ref.outputs


def run_torch(case: Case, m: CheckedModel, w: dict[str, np.ndarray], dtype: str) -> object:
    net = seqdsl.loads(case.source).build("torch", dtype=dtype)
    net.load_canonical({k: v.astype(dtype) for k, v in w.items()})
    net.train(case.training)
    xs = [torch.as_tensor(x.astype(dtype)) for x in case.inputs]
    drops = keep_masks(m, case) or None
    with torch.no_grad():
        return net(*xs, lengths=case.lengths or None, masks=case.masks or None, dropout_masks=drops)


def run_jax(case: Case, m: CheckedModel, w: dict[str, np.ndarray], dtype: str) -> object:
    net = seqdsl.loads(case.source).build("jax", dtype=dtype)
    net.load_canonical({k: v.astype(dtype) for k, v in w.items()})
    return net(*[x.astype(dtype) for x in case.inputs], training=case.training,
               lengths=case.lengths or None, masks=case.masks or None,
               dropout_masks=keep_masks(m, case) or None)  # fmt: skip


def keras_module(m: CheckedModel) -> Any:
    return load_source(emit(m, "keras"), m.name)


def run_keras(case: Case, m: CheckedModel, w: dict[str, np.ndarray]) -> object:
    mod = keras_module(m)
    net = mod.build_model()
    net.load_canonical(w)
    xs: list[np.ndarray] = []
    for decl, x in zip(m.model.inputs, case.inputs, strict=True):
        xs.append(x.astype(np.float32))
        if decl.name in case.lengths:
            xs.append(case.lengths[decl.name].astype(np.int32))
        elif decl.name in case.masks:
            xs.append(case.masks[decl.name])
    args = xs if len(xs) > 1 else xs[0]
    drops = keep_masks(m, case)
    if drops:
        with mod.dropout_masks(net, drops):
            return net(args, training=True)
    return net(args)


# --------------------------------------------------------------------------
# parity


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_parity_torch_jax_keras(case: Case) -> None:
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the Keras module runs on Keras' TensorFlow backend here")
    m = seqdsl.loads(case.source).model()
    w = rand_weights(m, 3)
    want = reference(case, m, w)
    for backend, got in (
        ("torch", run_torch(case, m, w, "float32")),
        ("jax", run_jax(case, m, w, "float32")),
        ("keras", run_keras(case, m, w)),
    ):
        compare(got, want, TOL, f"{case.id} on {backend}")


F64 = [c for c in CASES if c.id in ("att_concat_gap_scores", "att_key_causal", "mha_key_sizes",
                                    "mha_nobias_causal_scores", "mha_dropout_training")]  # fmt: skip


@pytest.mark.parametrize("case", F64, ids=[c.id for c in F64])
def test_parity_float64(case: Case) -> None:
    m = seqdsl.loads(case.source).model()
    w = rand_weights(m, 4)
    want = reference(case, m, w)
    compare(run_torch(case, m, w, "float64"), want, 1e-10, f"{case.id} on torch, float64")
    with jax.enable_x64(True):
        compare(run_jax(case, m, w, "float64"), want, 1e-10, f"{case.id} on jax, float64")


def test_cases_reach_every_situation() -> None:
    """The cases have query steps with no valid key (the value's empty row under a valid
    query row, and causal rows before a pre-padded value starts), on every layer."""
    for case in CASES:
        if case.v == "none" or case.nonempty:
            continue
        m = seqdsl.loads(case.source).model()
        ref = run_reference(m, {k: v.astype(np.float64) for k, v in rand_weights(m, 3).items()},
                            case.inputs, lengths=case.lengths, masks=case.masks,
                            training=case.training, dropout_masks=keep_masks(m, case))  # fmt: skip
        y = ref.values["y"][0]
        # row 2 of the value is empty: its query steps get 0 (Attention) or the bias (MHA)
        if m.layer("att").kind == "Attention" and case.self_attention is False:
            assert np.abs(y[2]).max() == 0.0, case.id
        assert np.abs(y[0]).max() > 1e-3, case.id


# --------------------------------------------------------------------------
# how each backend computes it


def test_torch_runs_sdpa_and_guards_empty_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dot-product attention without returned weights runs on
    F.scaled_dot_product_attention (a spy counts the calls); the rows it would fill
    with NaN (no allowed key) come out 0 and finite. Returned weights or training
    dropout take the explicit softmax instead."""
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(*args: Any, **kw: Any) -> Any:
        out = sdpa(*args, **kw)
        calls.append(bool(torch.isnan(out).any()))
        return out

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    for case, fused in (
        (CASES[0], True),  # att_post
        (CASES[3], True),  # att_key_causal
        (CASES[8], True),  # mha_post
        (CASES[2], False),  # concat scores
        (CASES[10], False),  # returned weights
    ):
        calls.clear()
        m = seqdsl.loads(case.source).model()
        w = rand_weights(m, 3)
        compare(run_torch(case, m, w, "float32"), reference(case, m, w), TOL, case.id)
        assert bool(calls) == fused, case.id
        assert not any(calls), f"{case.id}: SDPA produced NaN (an unguarded empty row)"
    # dropout: the fused kernel in inference, the explicit weights (and keep-mask) in training
    case = make(Case("att_dropout", 'Attention(dropout=0.4, name="att")', "post", "gap"), 11)
    m = seqdsl.loads(case.source).model()
    w = rand_weights(m, 3)
    calls.clear()
    compare(run_torch(case, m, w, "float32"), reference(case, m, w), TOL, case.id)
    assert calls == [False]
    case.training = True
    calls.clear()
    compare(run_torch(case, m, w, "float32"), reference(case, m, w), TOL, case.id + " training")
    assert calls == []


def test_keras_uses_its_own_layers_where_they_agree() -> None:
    """keras.layers.Attention / MultiHeadAttention where no query step can be left
    without a valid key; the small subclasses otherwise (docs/backend-keras.md)."""
    plain = {"att_nonempty_keras_layer", "mha_nonempty_keras_layer", "mha_unmasked",
             "mha_causal_only"}  # fmt: skip
    broadcast_bias = {"mha_key_dim_1_unmasked"}  # unmasked, heads of size 1 with a bias
    for case in CASES:
        text = emit(seqdsl.loads(case.source).model(), "keras")
        std = re.search(r"= layers\.(Attention|MultiHeadAttention)\(", text) is not None
        sub = re.search(r"= Masked(Attention|MultiHeadAttention)\(", text) is not None
        bias = re.search(r"= PortableMultiHeadAttention\(", text) is not None
        assert std + sub + bias == 1, case.id
        assert std == (case.id in plain), case.id
        assert bias == (case.id in broadcast_bias), case.id


def test_masks_and_weights_keys_are_the_canonical_layout() -> None:
    m = seqdsl.loads(CASES[9].source).model()  # mha_key_sizes: q 4, v 3, k 5 features
    layer = m.layer("att")
    assert [(w.name, w.shape) for w in layer.weights] == [
        ("query/kernel", (4, 2, 3)), ("query/bias", (2, 3)),
        ("key/kernel", (5, 2, 3)), ("key/bias", (2, 3)),
        ("value/kernel", (3, 2, 2)), ("value/bias", (2, 2)),
        ("attention_output/kernel", (2, 2, 5)), ("attention_output/bias", (5,)),
    ]  # fmt: skip
    net = seqdsl.loads(CASES[9].source).build("torch")
    assert set(net.canonical_weights()) == {f"att/{w.name}" for w in layer.weights}
    assert set(seqdsl.loads(CASES[9].source).build("jax").canonical_weights()) == set(
        net.canonical_weights()
    )


@pytest.mark.parametrize("index", [0, 2, 10, 14], ids=lambda i: CASES[i].id)
def test_gradients_are_finite_with_empty_rows(index: int) -> None:
    """Training through rows with no valid key (SDPA's guarded rows, the masked
    softmax's -inf entries) gives finite gradients on torch and JAX."""
    case = CASES[index]
    prog = seqdsl.loads(case.source)
    m = prog.model()
    w = rand_weights(m, 3)
    drops = keep_masks(m, case) or None
    net = prog.build("torch")
    net.load_canonical(w)
    net.train(case.training)
    xs = [torch.tensor(x, dtype=torch.float32, requires_grad=True) for x in case.inputs]
    out = net(*xs, lengths=case.lengths or None, masks=case.masks or None, dropout_masks=drops)
    values = out if isinstance(out, tuple) else (out,)
    loss = sum((v[0] if isinstance(v, tuple) else v).square().sum() for v in values)
    loss.backward()
    grads = [x.grad for x in xs] + [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().max()) > 0 for g in grads if g is not None)
    jnet = prog.build("jax")
    jnet.load_canonical(w)
    mod = sys.modules[type(jnet).__module__]

    def loss_fn(variables: Any, *inputs: Any) -> Any:
        o = mod.apply(variables, *inputs, training=case.training, lengths=case.lengths or None,
                      masks=case.masks or None, dropout_masks=drops)  # fmt: skip
        return sum(jax.numpy.square(v[0] if isinstance(v, tuple) else v).sum()
                   for v in (o if isinstance(o, tuple) else (o,)))  # fmt: skip

    n = len(case.inputs)
    g = jax.grad(loss_fn, argnums=tuple(range(n + 1)))(jnet.variables, *case.inputs)
    leaves = [np.asarray(a) for a in jax.tree_util.tree_leaves(g)]
    assert all(np.isfinite(a).all() for a in leaves)
