"""``seqdsl run`` and seqdsl.run: data files checked against the declarations and
padded, generated data, the backends against the reference interpreter, bad data
as one error with the contract's exit code, and the command without frameworks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import seqdsl
from seqdsl.cli import EXIT_OK, EXIT_USAGE, EXIT_USER, main
from seqdsl.reference import reference_weights, run_reference
from seqdsl.run import DataError, DataFileError, generate_data, load_data, run_batch
from tests.refuse import refusing

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

TWO = """\
model Two {
    input frames: f32[B, T, 3] pad(pre, value=0.0) masked
    input ids: i32[B, S] pad(post, value=0)
    a = frames -> GRU(4)
    b = ids -> Embedding(20, 4, mask_zero=true) -> LSTM(4, return_sequences=true)
    output a, b with mask
}
"""

ROWS_FRAMES = [[[1, 2, 3], [4, 5, 6]], [[0.5, 0.5, 0.5]], [[1, 0, 1], [2, 2, 2], [3, 1, 3]]]
ROWS_IDS = [[3, 4, 5], [7], [9, 10]]


def _two() -> seqdsl.api.CheckedModel:
    return seqdsl.loads(TWO).model()


def _hand_padded() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rows above, padded by hand: frames pre with 0.0 to 3 steps, ids post with 0."""
    frames = np.zeros((3, 3, 3), np.float32)
    frames[0, 1:] = ROWS_FRAMES[0]
    frames[1, 2:] = ROWS_FRAMES[1]
    frames[2, :] = ROWS_FRAMES[2]
    ids = np.array([[3, 4, 5], [7, 0, 0], [9, 10, 0]], np.int32)
    return frames, np.array([2, 1, 3]), ids


def _write_all_formats(tmp_path: Path) -> list[Path]:
    records = [{"frames": f, "ids": i} for f, i in zip(ROWS_FRAMES, ROWS_IDS, strict=True)]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n\n" for r in records), encoding="utf-8")
    rec = tmp_path / "records.json"
    rec.write_text(json.dumps(records), encoding="utf-8")
    cols = tmp_path / "columns.json"
    cols.write_text(json.dumps({"frames": ROWS_FRAMES, "ids": ROWS_IDS}), encoding="utf-8")
    npz = tmp_path / "ragged.npz"
    np.savez(
        npz,
        frames_values=np.concatenate([np.asarray(r, np.float32) for r in ROWS_FRAMES]),
        frames_row_lengths=np.array([2, 1, 3]),
        ids_values=np.array([i for r in ROWS_IDS for i in r], np.int64),
        ids_row_lengths=np.array([3, 1, 2]),
    )
    return [jsonl, rec, cols, npz]


def test_every_format_gives_the_hand_padded_batch(tmp_path: Path) -> None:
    m = _two()
    frames, lens, ids = _hand_padded()
    for path in _write_all_formats(tmp_path):
        b = load_data(path, m)
        assert b.inputs[0].dtype == np.float32 and b.inputs[1].dtype == np.int32, path
        np.testing.assert_array_equal(b.inputs[0], frames, err_msg=str(path))
        np.testing.assert_array_equal(b.inputs[1], ids, err_msg=str(path))
        assert set(b.lengths) == {"frames"}  # only the `masked` input takes lengths
        np.testing.assert_array_equal(b.lengths["frames"], lens)
        assert b.ignored == ()


def test_run_equals_the_reference_on_hand_padded_inputs(tmp_path: Path) -> None:
    m = _two()
    frames, lens, ids = _hand_padded()
    want = run_reference(m, reference_weights(m, 3), [frames, ids], lengths={"frames": lens})
    got = run_batch(m, load_data(_write_all_formats(tmp_path)[0], m), "reference", seed=3)
    assert [o.name for o in got.outputs] == ["a", "b"]
    np.testing.assert_array_equal(got.outputs[0].value, want.outputs[0])
    value, mask = want.outputs[1]  # type: ignore[misc]
    np.testing.assert_array_equal(got.outputs[1].value, value)
    np.testing.assert_array_equal(got.outputs[1].mask, mask)
    np.testing.assert_array_equal(mask, ids != 0)  # the mask is the embedding's
    assert got.outputs[0].mask is None


def test_extra_keys_are_listed_not_used(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    p.write_text('{"tokens": [1, 2], "label": 1}\n{"tokens": [3], "label": 0}\n')
    b = load_data(p, seqdsl.load(EXAMPLES / "sentiment_lstm.seq").model())
    assert b.ignored == ("label",)
    np.testing.assert_array_equal(b.inputs[0], [[1, 2], [3, 0]])


def test_bare_rows_for_a_one_input_model(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    p.write_text("[4, 5, 6]\n[7]\n")
    b = load_data(p, seqdsl.load(EXAMPLES / "sentiment_lstm.seq").model())
    np.testing.assert_array_equal(b.inputs[0], [[4, 5, 6], [7, 0, 0]])


def test_generated_data_fits_the_declarations() -> None:
    m = seqdsl.load(EXAMPLES / "conv_frontend_lstm.seq").model()
    b = generate_data(m, seed=1, rows=5)
    (frames,) = b.inputs
    assert frames.shape[0] == 5 and frames.shape[2] == 40 and frames.dtype == np.float32
    lens = b.lengths["frames"]
    assert lens[0] == frames.shape[1] and (lens >= 1).all()
    # the two valid convolutions (k=5, s=2; k=3, s=2) leave at least one step
    t = frames.shape[1]
    assert ((t - 5) // 2 + 1 - 3) // 2 + 1 >= 1
    for i, n in enumerate(lens):
        assert not np.any(frames[i, n:])  # post padding with 0.0
    # the same seed, the same data
    np.testing.assert_array_equal(generate_data(m, seed=1, rows=5).inputs[0], frames)


def test_generated_ids_stay_below_the_vocabulary_and_off_the_pad_value() -> None:
    m = seqdsl.loads(
        "model M {\n input t: i32[B, T] pad(post, value=2)\n"
        " x = t -> Embedding(3, 4) -> LSTM(2)\n output x\n}\n"
    ).model()
    b = generate_data(m, seed=0, rows=16)
    (t,) = b.inputs
    for i, n in enumerate(b.row_lengths["t"]):
        assert set(t[i, :n].tolist()) <= {1}  # ids in [1, 3) except the pad value 2
        assert set(t[i, n:].tolist()) <= {2}


def test_generated_data_keeps_a_declared_batch_and_divisibility() -> None:
    m = seqdsl.load(EXAMPLES / "rnn_guide_stateful.seq").model()  # f32[20, 10, 50]
    assert generate_data(m).inputs[0].shape == (20, 10, 50)
    split = seqdsl.loads(
        "model M {\n input t: i32[B, T] pad(post, value=0, nonempty=true)\n"
        " e = t -> Embedding(9, 4, mask_zero=true)\n a, b, c = TemporalSplit(3)(e)\n"
        " x = a -> LSTM(2)\n output x\n}\n"
    ).model()
    assert generate_data(split).inputs[0].shape[1] % 3 == 0


def test_every_example_runs_on_generated_data(capsys: pytest.CaptureFixture[str]) -> None:
    files = sorted(EXAMPLES.glob("*.seq"))
    assert files
    for f in files:
        assert main(["run", str(f)]) == EXIT_OK, f
    out = capsys.readouterr().out
    assert out.count("time: build") == len(files)


def test_cli_prints_outputs_masks_and_time(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "run",
            str(EXAMPLES / "attention_seq2seq.seq"),
            "--data",
            str(EXAMPLES / "data" / "seq2seq.json"),
        ]
    )
    out = capsys.readouterr().out
    assert code == EXIT_OK
    assert "3 row(s)" in out
    assert "output logits: float64 [3, 5, 2000]" in out
    assert "valid steps per row (first ones): 5 3 3 of 5" in out
    assert "time: build" in out


def test_readme_first_command_data() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    cmd = "seqdsl run examples/sentiment_lstm.seq --data examples/data/sentiment.jsonl"
    assert cmd in readme.split("\n\n")[1]  # in the first code block
    m = seqdsl.load(EXAMPLES / "sentiment_lstm.seq").model()
    b = load_data(EXAMPLES / "data" / "sentiment.jsonl", m)
    assert b.rows >= 4 and len(set(b.row_lengths["tokens"].tolist())) > 1


BAD = [
    # file, contents, exit code, words of the message
    ("a.jsonl", '{"tokens": [1, 2.5]}\n', EXIT_USER, ["row 1 of `tokens` holds floats", "i32"]),
    ("a.jsonl", '{"token": [1, 2]}\n', EXIT_USER, ["no data for the input tokens", "token"]),
    ("a.jsonl", '{"tokens": [1, 0, 3]}\n', EXIT_USER, ["padding value 0 at step 2"]),
    ("a.jsonl", '{"tokens": [1, 9000]}\n', EXIT_USER, ["id 9000", "input_dim=5000"]),
    ("a.jsonl", '{"tokens": [true, false]}\n', EXIT_USER, ["holds booleans"]),
    ("a.jsonl", '{"tokens": [[1, 2], [3]]}\n', EXIT_USER, ["uneven lengths"]),
    ("a.jsonl", '{"tokens": [[1, 2], [3, 4]]}\n', EXIT_USER, ["2 axes"]),
    ("a.jsonl", '{"tokens": [1]}\n\n{"tokens": [2], "x": 1}\n', EXIT_USER, ["line 3", "adds x"]),
    ("a.jsonl", '"text"\n', EXIT_USER, ["is a str"]),
    ("a.jsonl", '{"tokens": [1, 2]}\n{"tokens": [3, NaN]}\n', EXIT_USER, ["row 2", "floats"]),
    ("a.json", '{"tokens": 3}', EXIT_USER, ["is a int"]),
    ("a.json", "[]", EXIT_USER, ["no records"]),
    ("a.jsonl", '{"tokens": [1, 2\n', EXIT_USAGE, ["a.jsonl:1:", "not JSON"]),
    ("a.csv", "1,2\n", EXIT_USAGE, ["unknown data format '.csv'"]),
    ("a.npz", "not a zip", EXIT_USAGE, ["not a NumPy .npz"]),
]


@pytest.mark.parametrize(("name", "text", "code", "words"), BAD, ids=[b[2] for b in BAD])
def test_bad_data_is_one_error(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    text: str,
    code: int,
    words: list[str],
) -> None:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    assert main(["run", str(EXAMPLES / "sentiment_lstm.seq"), "--data", str(p)]) == code
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    for w in words:
        assert w in err


def test_bad_data_against_declared_shapes(tmp_path: Path) -> None:
    m = seqdsl.load(EXAMPLES / "rnn_guide_stateful.seq").model()  # f32[20, 10, 50]
    p = tmp_path / "d.npz"
    np.savez(p, paragraph=np.zeros((3, 10, 50), np.float32))
    with pytest.raises(DataError, match=r"`paragraph` has 3 rows, .* declares 20"):
        load_data(p, m)
    np.savez(p, paragraph_values=np.zeros((5, 50)), paragraph_row_lengths=np.array([2, 3]))
    with pytest.raises(
        DataError, match=r"row 2 of `paragraph` has shape \[3, 50\], row 1 \[2, 50\]"
    ):
        load_data(p, m)
    np.savez(p, paragraph_values=np.zeros((5, 50)))
    with pytest.raises(DataError, match="without 'paragraph_row_lengths'"):
        load_data(p, m)
    with pytest.raises(DataFileError, match="cannot read"):
        load_data(tmp_path / "missing.json", m)


def test_nan_in_floats(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    p.write_text(
        '{"frames": [[1, 2, 3]], "ids": [1]}\n{"frames": [[1, 2, 3], [1, NaN, 3]], "ids": [2]}\n'
    )
    with pytest.raises(DataError, match=r"row 2 of `frames` holds NaN or infinity \(step 2\)"):
        load_data(p, _two())


def test_a_masked_input_without_pad_needs_its_mask(tmp_path: Path) -> None:
    m = seqdsl.loads(
        "model M {\n input x: f32[B, T, 2] masked\n y = x -> LSTM(3)\n output y\n}\n"
    ).model()
    p = tmp_path / "d.json"
    p.write_text(json.dumps({"x": [[[1, 2], [3, 4]], [[5, 6], [7, 8]]]}))
    with pytest.raises(DataError, match="give one bool per step as `x_mask`"):
        load_data(p, m)
    p.write_text(
        json.dumps({"x": [[[1, 2], [3, 4]], [[5, 6], [7, 8]]], "x_mask": [[1, 0], [1, 1]]})
    )
    with pytest.raises(DataError, match="booleans"):
        load_data(p, m)
    p.write_text(
        json.dumps(
            {"x": [[[1, 2], [3, 4]], [[5, 6], [7, 8]]], "x_mask": [[True, False], [False, True]]}
        )
    )
    b = load_data(p, m)
    np.testing.assert_array_equal(b.masks["x"], [[True, False], [False, True]])


def test_too_short_for_the_windows(tmp_path: Path) -> None:
    m = seqdsl.load(EXAMPLES / "conv_frontend_lstm.seq").model()
    p = tmp_path / "d.npz"
    np.savez(p, frames=np.ones((2, 4, 40), np.float32))
    with pytest.raises(DataError, match=r"Conv1D \(line 22\) needs T >= 5, and T is 4 here"):
        load_data(p, m)
    np.savez(p, frames=np.ones((2, 8, 40), np.float32))  # 4 steps reach the second window
    with pytest.raises(
        DataError, match=r"\(line 23\) needs \(T \+ 1\) // 2 >= 5, and .* is 4 here"
    ):
        load_data(p, m)
    np.savez(p, frames=np.ones((2, 9, 40), np.float32))
    assert load_data(p, m).inputs[0].shape == (2, 9, 40)


def test_unknown_model_and_bad_rows_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    f = str(EXAMPLES / "sentiment_lstm.seq")
    assert main(["run", f, "--model", "Nope"]) == EXIT_USAGE
    assert main(["run", f, "--rows", "0"]) == EXIT_USAGE
    capsys.readouterr()


@pytest.mark.parametrize("backend", ["torch", "jax", "keras"])
def test_backends_give_the_reference_numbers(backend: str, tmp_path: Path) -> None:
    pytest.importorskip({"keras": "keras", "jax": "jax", "torch": "torch"}[backend])
    m = _two()
    b = load_data(_write_all_formats(tmp_path)[0], m)
    want = run_batch(m, b, "reference", seed=2)
    got = run_batch(m, b, backend, seed=2)
    assert got.backend == backend
    for w, g in zip(want.outputs, got.outputs, strict=True):
        assert g.name == w.name
        np.testing.assert_allclose(g.value, w.value, atol=1e-5)
        if w.mask is None:
            assert g.mask is None
        else:
            np.testing.assert_array_equal(g.mask, w.mask)


DRIVER = """
import contextlib, io, json, sys
import seqdsl.cli
results = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = seqdsl.cli.main(argv)
    results.append([code, out.getvalue(), err.getvalue()])
frameworks = sorted(m for m in sys.modules if m.partition(".")[0] in FRAMEWORKS)
print(json.dumps({"results": results, "frameworks": frameworks}))
"""


def test_run_without_frameworks() -> None:
    """With torch, jax, keras and tensorflow refused: the reference backend runs the
    README's command, and a framework backend is a usage error naming the extra."""
    blocked = ("torch", "jax", "jaxlib", "keras", "tensorflow")
    script = refusing(*blocked) + f"\nFRAMEWORKS = {blocked!r}\n" + DRIVER
    seq = "examples/sentiment_lstm.seq"
    runs = [
        ["run", seq, "--data", "examples/data/sentiment.jsonl"],
        ["run", seq, "--backend", "torch"],
        ["run", seq, "--backend", "keras"],
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        [sys.executable, "-c", script, json.dumps(runs)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["frameworks"] == []
    (c0, out0, _), (c1, _, err1), (c2, _, err2) = report["results"]
    assert c0 == EXIT_OK and "output x: float64 [8, 32]" in out0
    assert c1 == EXIT_USAGE and "pip install 'seqdsl[torch]'" in err1
    assert c2 == EXIT_USAGE and "pip install 'seqdsl[keras]'" in err2


def test_weights_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from seqdsl.weightsfile import save_weights

    m = _two()
    batch = load_data(_write_all_formats(tmp_path)[0], m)
    path = tmp_path / "w.safetensors"
    save_weights(path, reference_weights(m, 5))
    want = run_batch(m, batch, "reference", seed=5)
    got = run_batch(m, batch, "reference", seed=0, weights=path)
    assert got.weights == str(path)
    for w, g in zip(want.outputs, got.outputs, strict=True):
        np.testing.assert_array_equal(g.value, w.value)
    # a weight missing, one unknown: one error naming both, exit 1
    bad = dict(reference_weights(m, 5))
    bad["extra/kernel"] = bad.pop("a_gru/kernel")
    save_weights(tmp_path / "bad.safetensors", bad)
    seq = tmp_path / "two.seq"
    seq.write_text(TWO, encoding="utf-8")
    args = ["run", str(seq), "--weights"]
    assert main([*args, str(tmp_path / "bad.safetensors")]) == EXIT_USER
    err = capsys.readouterr().err
    assert "missing weight 'a_gru/kernel'" in err and "unknown weight 'extra/kernel'" in err
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    assert main([*args, str(tmp_path / "junk.safetensors")]) == EXIT_USAGE
    assert main([*args, str(tmp_path / "none.safetensors")]) == EXIT_USAGE
    assert main([*args, str(path)]) == EXIT_OK
    assert f"weights {path}" in capsys.readouterr().out


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_weights_file_on_a_framework(backend: str, tmp_path: Path) -> None:
    pytest.importorskip(backend)
    from seqdsl.weightsfile import save_weights

    m = _two()
    batch = load_data(_write_all_formats(tmp_path)[0], m)
    path = tmp_path / "w.safetensors"
    save_weights(path, {k: v.astype(np.float32) for k, v in reference_weights(m, 7).items()})
    want = run_batch(m, batch, "reference", seed=7)
    got = run_batch(m, batch, backend, seed=0, weights=path)
    for w, g in zip(want.outputs, got.outputs, strict=True):
        np.testing.assert_allclose(g.value, w.value, atol=1e-5)
