"""PyTorch rows: generated vs hand-written (section 1), masks (2), padding (4).

The hand-written models are what a competent PyTorch user writes for a
right-padded batch with lengths, two exact options each:

  packed        nn.LSTM/nn.GRU(num_layers=2[, bidirectional=True]) on
                pack_padded_sequence(enforce_sorted=False); output h_n of the last layer
  padded        unidirectional: the same module on the padded batch, the last
                layer's output gathered at each row's length - 1 (padding after the
                last valid step cannot change it: exact for post padding)
  padded+flip   bidirectional: a forward module on the padded batch and a backward
                module on each row reversed within its length (one gather), per layer

The baseline of a row is the faster of its exact options, measured in the same
run. Weights are copied from the generated model (Keras layout -> torch's), and
every option's output is compared with the generated model's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from .common import measure, size_key
from .models import Data, layer_weights, load, make_data

LR = 1e-4


def _gru_blocks(w: np.ndarray, axis: int) -> np.ndarray:
    """Keras' GRU gate blocks z, r, h -> torch's r, z, n."""
    z, r, h = np.split(w, 3, axis=axis)
    return np.concatenate([r, z, h], axis=axis)


def _torch_params(cell: str, w: dict[str, np.ndarray], prefix: str = "") -> list[np.ndarray]:
    """[W_ih, W_hh, b_ih, b_hh] in torch's layout from one Keras layer's weights."""
    k, rk, b = w[prefix + "kernel"], w[prefix + "recurrent_kernel"], w[prefix + "bias"]
    if cell == "gru":
        return [
            _gru_blocks(k, 1).T,
            _gru_blocks(rk, 1).T,
            _gru_blocks(b[0], 0),
            _gru_blocks(b[1], 0),
        ]
    return [k.T, rk.T, b, np.zeros_like(b)]


def _load_rnn(module: nn.RNNBase, layer: int, suffix: str, params: list[np.ndarray]) -> None:
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    with torch.no_grad():
        for n, v in zip(names, params, strict=True):
            getattr(module, f"{n}_l{layer}{suffix}").copy_(
                torch.from_numpy(np.ascontiguousarray(v))
            )


class HandStack(nn.Module):
    """The hand-written two-layer stack, with its exact options as methods."""

    def __init__(self, cell: str, units: int, canonical: dict[str, np.ndarray]):
        super().__init__()
        self.cell = cell
        self.bi = cell == "bilstm"
        hidden = units // 2 if self.bi else units
        rnn_cls = nn.GRU if cell == "gru" else nn.LSTM
        layers = layer_weights(canonical)
        base = "gru" if cell == "gru" else "lstm"
        # one module for both layers (packed / padded)
        self.rnn = rnn_cls(units, hidden, num_layers=2, batch_first=True, bidirectional=self.bi)
        for i, w in enumerate(layers):
            if self.bi:
                _load_rnn(self.rnn, i, "", _torch_params(base, w, "forward/"))
                _load_rnn(self.rnn, i, "_reverse", _torch_params(base, w, "backward/"))
            else:
                _load_rnn(self.rnn, i, "", _torch_params(base, w))
        if self.bi:  # padded+flip: one module per layer and direction
            self.fwd = nn.ModuleList()
            self.bwd = nn.ModuleList()
            for w in layers:
                f = rnn_cls(units, hidden, batch_first=True)
                b = rnn_cls(units, hidden, batch_first=True)
                _load_rnn(f, 0, "", _torch_params(base, w, "forward/"))
                _load_rnn(b, 0, "", _torch_params(base, w, "backward/"))
                self.fwd.append(f)
                self.bwd.append(b)

    def packed(self, x: torch.Tensor, lengths_cpu: torch.Tensor) -> torch.Tensor:
        p = pack_padded_sequence(x, lengths_cpu, batch_first=True, enforce_sorted=False)
        _, state = self.rnn(p)
        h = state[0] if isinstance(state, tuple) else state
        return torch.cat([h[-2], h[-1]], dim=1) if self.bi else h[-1]

    def padded(self, x: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """last: lengths - 1, [B]."""
        y, _ = self.rnn(x)
        return y.gather(1, last.view(-1, 1, 1).expand(-1, 1, y.shape[2]))[:, 0]

    def padded_flip(self, x: torch.Tensor, last: torch.Tensor, rev: torch.Tensor) -> torch.Tensor:
        """rev: [B, T] index reversing each row within its length (identity past it)."""
        gather = rev[..., None]
        for i, (f, b) in enumerate(zip(self.fwd, self.bwd, strict=True)):
            yf, _ = f(x)
            yb, _ = b(x.gather(1, gather.expand(-1, -1, x.shape[2])))
            if i == len(self.fwd) - 1:
                idx = last.view(-1, 1, 1).expand(-1, 1, yf.shape[2])
                return torch.cat([yf.gather(1, idx)[:, 0], yb.gather(1, idx)[:, 0]], dim=1)
            x = torch.cat([yf, yb.gather(1, gather.expand(-1, -1, yb.shape[2]))], dim=2)
        raise AssertionError("unreachable")


def _reverse_index(lengths: torch.Tensor, steps: int) -> torch.Tensor:
    t = torch.arange(steps)[None, :]
    n = lengths[:, None]
    return torch.where(t < n, n - 1 - t, t)


def _train_step(
    forward: Callable[[], torch.Tensor], opt: torch.optim.Optimizer
) -> Callable[[], None]:
    def step() -> None:
        opt.zero_grad(set_to_none=True)
        out = forward()
        out.square().mean().backward()
        opt.step()

    return step


def _infer(forward: Callable[[], torch.Tensor]) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad():
            forward()

    return run


def _build(cell: str, units: int, mask: str) -> Any:
    return load(cell, units, mask).build("torch", seed=0)


def _inputs(data: Data) -> dict[str, Any]:
    x = torch.from_numpy(data.x)
    lengths = torch.from_numpy(data.lengths)
    if data.kind in ("post", "pre"):
        return {"x": x, "kw": {"lengths": lengths}}
    if data.kind == "gaps":
        return {"x": x, "kw": {"masks": torch.from_numpy(data.mask)}}
    return {"x": x, "kw": {}}


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach() - b.detach()).abs().max())


# --------------------------------------------------------------------------
# section 1


def handwritten(row: dict[str, Any], opts: dict[str, Any]) -> list[dict[str, Any]]:
    cell, b, t, u = row["cell"], row["B"], row["T"], row["U"]
    data = make_data(b, t, u, "post")
    gen = _build(cell, u, "post")
    hand = HandStack(cell, u, gen.canonical_weights())
    x = torch.from_numpy(data.x)
    lengths = torch.from_numpy(data.lengths)
    last = lengths - 1
    rev = _reverse_index(lengths, t)
    forwards: dict[str, Callable[[], torch.Tensor]] = {
        "generated": lambda: gen(x, lengths=lengths),
        "packed": lambda: hand.packed(x, lengths),
    }
    if hand.bi:
        forwards["padded+flip"] = lambda: hand.padded_flip(x, last, rev)
    else:
        forwards["padded"] = lambda: hand.padded(x, last)
    with torch.no_grad():
        ref = forwards["generated"]()
        diffs = {k: _diff(f(), ref) for k, f in forwards.items() if k != "generated"}
    out = []
    for mode in row.get("modes", ("inference", "train")):
        if mode == "inference":
            gen.eval()
            fns = {k: _infer(f) for k, f in forwards.items()}
        else:
            gen.train()
            opt_gen = torch.optim.SGD(gen.parameters(), lr=LR)
            opt_hand = torch.optim.SGD(hand.parameters(), lr=LR)
            fns = {
                k: _train_step(f, opt_gen if k == "generated" else opt_hand)
                for k, f in forwards.items()
            }
        m = measure(fns, **opts)
        hand_names = [k for k in fns if k != "generated"]
        base = min(hand_names, key=m.median)
        out.append(
            {
                "section": "handwritten",
                "framework": "torch",
                "cell": cell,
                "B": b,
                "T": t,
                "U": u,
                "size": size_key(b, t, u),
                "mode": mode,
                "variants": m.stats(),
                "baseline": base,
                "ratio": m.ratio("generated", base),
                "other_ratios": {k: m.ratio("generated", k) for k in hand_names if k != base},
                "max_abs_diff": diffs,
                "valid_fraction": round(data.valid_fraction, 4),
                "rounds": m.rounds,
                "wall_s": round(m.wall_s, 2),
            }
        )
    gen.eval()
    return out


# --------------------------------------------------------------------------
# section 2


def masks(row: dict[str, Any], opts: dict[str, Any]) -> list[dict[str, Any]]:
    cell, b, t, u = row["cell"], row["B"], row["T"], row["U"]
    kinds = row.get("kinds", ("post", "pre", "gaps"))
    models = {"none": _build(cell, u, "none")}
    weights = models["none"].canonical_weights()
    for k in kinds:
        models[k] = _build(cell, u, k)
        models[k].load_canonical(weights)
    datas = {k: make_data(b, t, u, k) for k in ("none", *kinds)}
    feeds = {k: _inputs(datas[k]) for k in models}
    # the unmasked model reads the post-padded batch (zeros in the padding)
    feeds["none"] = {"x": torch.from_numpy(make_data(b, t, u, "post").x), "kw": {}}
    forwards: dict[str, Callable[[], torch.Tensor]] = {
        k: (lambda m=models[k], f=feeds[k]: m(f["x"], **f["kw"])) for k in models
    }
    out = []
    for mode in row.get("modes", ("inference", "train")):
        if mode == "inference":
            for mod in models.values():
                mod.eval()
            fns = {k: _infer(f) for k, f in forwards.items()}
        else:
            fns = {}
            for k, f in forwards.items():
                models[k].train()
                fns[k] = _train_step(f, torch.optim.SGD(models[k].parameters(), lr=LR))
        m = measure(fns, **opts)
        out.append(
            {
                "section": "masks",
                "framework": "torch",
                "cell": cell,
                "B": b,
                "T": t,
                "U": u,
                "size": size_key(b, t, u),
                "mode": mode,
                "variants": m.stats(),
                "ratios": {k: m.ratio(k, "none") for k in kinds},
                "valid_fraction": {k: round(datas[k].valid_fraction, 4) for k in kinds},
                "rounds": m.rounds,
                "wall_s": round(m.wall_s, 2),
            }
        )
    return out


# --------------------------------------------------------------------------
# section 4


def padding(row: dict[str, Any], opts: dict[str, Any]) -> list[dict[str, Any]]:
    from .padding_plan import plan

    cell, b, t, u = row["cell"], row["B"], row["T"], row["U"]
    p = plan(b, t, u, row.get("n_batches", 8), row.get("n_buckets", 8))
    masked = _build(cell, u, "post")
    plain = _build(cell, u, "none")
    plain.load_canonical(masked.canonical_weights())

    def tensors(batches: list[tuple[np.ndarray, np.ndarray]]) -> list[tuple[Any, Any]]:
        return [(torch.from_numpy(x), torch.from_numpy(n)) for x, n in batches]

    one = tensors([p.one_batch])[0]
    exact = [torch.from_numpy(x) for x in p.exact_groups]
    epochs = {k: tensors(v) for k, v in p.epochs.items()}

    def run_padded() -> torch.Tensor:
        return masked(one[0], lengths=one[1])

    def run_exact() -> torch.Tensor:
        return torch.cat([plain(x) for x in exact])

    def epoch(batches: list[tuple[Any, Any]], step: bool) -> Callable[[], None]:
        """Inference on every batch, or one training step per batch."""
        if not step:
            return _infer(lambda: torch.cat([masked(x, lengths=n) for x, n in batches]))
        steps = [_train_step(lambda x=x, n=n: masked(x, lengths=n), opt) for x, n in batches]

        def run() -> None:
            for s in steps:
                s()

        return run

    out = []
    for mode in row.get("modes", ("inference", "train")):
        train = mode == "train"
        masked.train(train)
        plain.train(train)
        opt = torch.optim.SGD(list(masked.parameters()) + list(plain.parameters()), lr=LR)
        waste: dict[str, Callable[[], None]] = {
            "padded": _train_step(run_padded, opt) if train else _infer(run_padded),
            # one step over every group, as the padded batch
            "exact": _train_step(run_exact, opt) if train else _infer(run_exact),
        }
        bucketing = {k: epoch(v, train) for k, v in epochs.items()}
        for group, fns in (("waste", waste), ("bucketing", bucketing)):
            m = measure(fns, **opts)
            out.append(p.row("torch", cell, mode, group, m))
    masked.eval()
    plain.eval()
    return out


def deploy(row: dict[str, Any], opts: dict[str, Any]) -> list[dict[str, Any]]:
    """Section 6: an example model's deployed forms against eager torch, interleaved
    round by round (bench/deploy.py's bench_example)."""
    import importlib
    import time

    bench = importlib.import_module("deploy")  # bench/deploy.py (bench/ is on sys.path)
    now = time.process_time if opts.get("clock") == "cpu" else time.perf_counter
    rounds = max(int(opts.get("rounds", 10)), int(opts.get("min_rounds", 3)))
    r = bench.bench_example(row["example"], row["B"], row["T"], rounds, now)
    return [{"section": "deploy", "runtime": "torch", **r, "size": f"B={row['B']} T={row['T']}"}]


SECTIONS = {"handwritten": handwritten, "masks": masks, "padding": padding, "deploy": deploy}
