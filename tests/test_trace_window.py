"""Traces of a probe fitted at position="last-K": each token reads the mean of its trailing window of K residuals,
which at the last prompt token is exactly what the probe was fitted and calibrated on (tiny random model)."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import tiny
import torch
from test_workflow import write_pairs

import emofast
from emofast.data import load_pairs
from emofast.generation import trace
from emofast.generation.readings import window_readings
from emofast.generation.table import TraceTable
from emofast.generation.trace import encode_prompts, token_reference
from emofast.probe import PairedProbe

K = 8
PROMPTS = ["I lost my keys on the train.", "We sat by the lake", "The meeting moved to Thursday at ten."]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = write_pairs(tmp_path_factory.mktemp("win") / "data")
    model, tok = tiny.model("llama"), tiny.tokenizer()
    tok.padding_side, tok.pad_token = "left", "<pad>"
    probe = PairedProbe.fit(model, tok, load_pairs(root), width=2, position=f"last-{K}")
    assert probe.extraction()["position"] == f"last-{K}"
    return model, tok, probe


def _with(probe, **changes):
    """A shallow copy of ``probe`` with other extraction settings or score kind (its cached reference kept)."""
    q = copy.copy(probe)
    q.meta = {**probe.meta, **{k: v for k, v in changes.items() if k != "score_kind"}}
    if "score_kind" in changes:
        q.score_kind = changes["score_kind"]
    return q


def _manual_windows(model, probe, ids, k):
    """The probe's columns at every position of ``ids`` [T], each over the mean of the residuals at
    ``max(0, j-k+1)..j`` from one uncached forward with output_hidden_states (the norms of the means too)."""
    layers = probe.scoring_layers()
    with torch.no_grad():
        hs = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
    x = torch.stack([hs[layer][0] for layer in layers], dim=1).double()  # [T, nL, D]
    win = torch.stack([x[max(0, j - k + 1) : j + 1].mean(0) for j in range(len(ids))])  # [T, nL, D]
    proj = torch.einsum("tld,lkd->tlk", win, probe.directions_for(layers).double())
    return probe.columns(proj, win.norm(dim=-1), layers)


@pytest.mark.parametrize("chat", [True, False])
def test_last_prompt_token_reads_the_probe_on_its_last_k_vector(fitted, chat):
    """The strong oracle: the reading at the last prompt token is the probe applied to emofast.extract(...,
    position="last-K") of the same prompt, percentages included (calibrated there). Without the chat template
    "Hi." is shorter than K: the window (and extract) takes all its tokens."""
    model, tok, probe = fitted
    prompts = PROMPTS + ["Hi."]
    ex = {**probe.extraction(), "chat_template": chat}
    if not chat:
        ex["system_prompt"] = None
        assert len(tok("Hi.")["input_ids"]) < K
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "not calibrated on single tokens" warning
        rows = trace(model, tok, prompts, probe, max_new_tokens=3, chat_template=chat, reference=None).to_pylist()
    layers = probe.scoring_layers()
    x = emofast.extract(model, tok, prompts, layers=layers, **ex)  # [N, nL, D]
    oracle = probe.columns(torch.einsum("nld,lkd->nlk", x, probe.directions_for(layers)), x.norm(dim=-1), layers)
    for pid in range(len(prompts)):
        mine = [r for r in rows if r["prompt_id"] == str(pid)]
        last = [r for r in mine if not r["is_generated"]][-1]
        assert last["calibrated"] and sum(r["calibrated"] for r in mine) == 1
        for name in probe.column_names():
            assert np.isfinite(last[name]), name
            assert last[name] == pytest.approx(float(oracle[name][pid]), abs=2e-4, rel=1e-3), name
        for r in mine:
            if not r["calibrated"]:
                assert all(np.isnan(r[c]) for c in probe.column_names() if c.startswith("p_"))


def test_every_reading_is_the_window_mean_of_the_hidden_states(fitted):
    """Every row, generated tokens included, equals the probe on the mean of the residuals of its trailing
    window, taken from output_hidden_states of the prompt and generated tokens run again without a cache."""
    model, tok, probe = fitted
    t = trace(model, tok, PROMPTS, probe, max_new_tokens=6, reference=None)
    rows = t.to_pylist()
    enc, mask = encode_prompts(
        tok, PROMPTS, chat_template=True, system_prompt=probe.extraction()["system_prompt"], device="cpu"
    )
    out = model.generate(
        input_ids=enc, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id
    )
    for pid in range(len(PROMPTS)):
        mine = [r for r in rows if r["prompt_id"] == str(pid)]
        assert sum(r["is_generated"] for r in mine) >= K // 2  # windows reach into the generated tokens
        ids = out[pid][mask[pid].bool().tolist() + [True] * (out.shape[1] - enc.shape[1])].tolist()[: len(mine)]
        ref = _manual_windows(model, probe, ids, K)
        for name in probe.names:
            got = np.array([r[name] for r in mine], dtype=float)
            np.testing.assert_allclose(got, ref[name], atol=2e-4, rtol=1e-3)
        # a single token reads differently: the test can tell a window from its last token
        single = _manual_windows(model, probe, ids, 1)
        assert max(np.abs(single[n] - ref[n]).max() for n in probe.names) > 1e-2


def test_table_marks_windows_holding_a_sink(fitted):
    """The shared assembly (both backends): a window holding a sink position is a sink; readings are the moving
    mean of the given projections; the last prompt token is calibrated even when its window holds a sink."""
    model, tok, probe = fitted
    layers = probe.scoring_layers()
    g = torch.Generator().manual_seed(0)
    R, k = 9, 3
    proj = torch.randn(R, len(layers), len(probe.names), generator=g)
    norms = 10 + torch.rand(R, len(layers), generator=g)
    norms[0] = 900.0  # the first token, as SmolLM2's <|im_start|>
    norms[6] = 900.0  # a sink in the generated part
    proj[0] = 5000.0
    table = TraceTable(tok, probe, layers, include_prompt=True, window=k)
    table.add("a", [5, 6, 7, 8], [9, 10, 11, 12, 13], proj, norms)
    table.add("b", [5, 6], [], proj[:2], norms[:2])
    cols = table.finish(reference=None)
    a = np.asarray(cols["prompt_id"]) == "a"
    assert cols["is_sink"][a].tolist() == [True, True, True, False, False, False, True, True, True]
    manual = torch.stack([proj[max(0, j - k + 1) : j + 1].double().mean(0) for j in range(R)])
    expect = probe.columns(manual, torch.full((R, len(layers)), float("nan")), layers)
    for name in probe.names:
        np.testing.assert_allclose(cols[name][a], expect[name], rtol=1e-6)
    assert cols["calibrated"].tolist() == [False, False, False, True] + [False] * 5 + [False, True]
    assert cols["is_sink"][~a].all()  # "b": its window holds its first token, a sink, and is still calibrated


def test_window_readings_edges():
    p, n = torch.ones(0, 2, 3), torch.ones(0, 2)
    assert [t.shape[0] for t in window_readings(p, n, 4)] == [0, 0, 0]
    p, n = torch.arange(6.0).reshape(3, 1, 2), torch.ones(3, 1)
    same = window_readings(p, n, 1)
    assert torch.equal(same[0], p.double()) and torch.equal(same[1], n.double())
    wide = window_readings(p, n, 10)  # wider than the sequence: the mean of all tokens so far
    assert torch.allclose(wide[0][2], p.double().mean(0)) and np.isnan(wide[1][1:].numpy()).all()
    with pytest.raises(ValueError, match="window must be >= 1"):
        window_readings(p, n, 0)


def test_token_reference_uses_the_windowed_readings_and_keys_on_the_position(fitted):
    model, tok, probe = fitted
    texts = ["The bus leaves at nine.", "Put the forms in the blue tray."]
    ref = token_reference(model, tok, probe, texts)
    values = {name: [] for name in probe.names}
    for text in texts:
        ids, _ = encode_prompts(
            tok, [text], chat_template=True, system_prompt=probe.extraction()["system_prompt"], device="cpu"
        )
        cols = _manual_windows(model, probe, ids[0].tolist(), K)
        for name in probe.names:
            values[name].append(cols[name])  # no sinks in the tiny model (checked below)
    assert ref["_n_tokens"] == sum(len(v) for v in values[probe.names[0]])
    for name in probe.names:
        v = np.concatenate(values[name])
        assert ref[name][0] == pytest.approx(v.mean(), abs=2e-4, rel=1e-3)
        assert ref[name][1] == pytest.approx(v.std(), abs=2e-4, rel=1e-3)
    # the cached default reference belongs to the probe's position: another window measures anew
    probe.token_reference = None
    default = token_reference(model, tok, probe)
    assert token_reference(model, tok, probe) is default
    other = _with(probe, position="last-2")
    assert other.token_reference is default  # the copy carries the cache, whose key names last-8
    again = token_reference(model, tok, other)
    assert again is not default and again["_key"] != default["_key"]
    assert again[probe.names[0]] != default[probe.names[0]]


def test_single_token_positions_still_warn_and_cosine_windows_are_refused(fitted):
    model, tok, probe = fitted
    for position in ("mean", -2):
        with pytest.warns(UserWarning, match="single tokens"):
            rows = trace(model, tok, PROMPTS[:1], _with(probe, position=position), max_new_tokens=2, reference=None)
        assert not any(rows.column("calibrated").to_pylist())
    cosine = _with(probe, score_kind="cosine")
    for call in (
        lambda: trace(model, tok, PROMPTS[:1], cosine, max_new_tokens=2, reference=None),
        lambda: token_reference(model, tok, cosine, ["A text."]),
    ):
        with pytest.raises(ValueError, match="scores by cosine .* norm of the mean of 8 residuals"):
            call()
    # a cosine probe at "last" reads single tokens, whose norms are known: allowed
    trace(model, tok, PROMPTS[:1], _with(cosine, position="last"), max_new_tokens=2, reference=None)
