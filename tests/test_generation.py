"""Tracing and steering on a tiny random model: the readings equal an uncached forward of the same tokens, the
last prompt token reads as the probe's own score, steering moves the steered layer by exactly alpha·σ, and the
hooks leave nothing behind."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import tiny
import torch
from test_workflow import write_pairs

import emofast
from emofast.data import load_pairs
from emofast.generation import Steering, steer, steering_vectors, trace
from emofast.generation.steer import random_vectors
from emofast.generation.trace import encode_prompts
from emofast.probe import PairedProbe

PROMPTS = ["I lost my keys on the train.", "We sat by the lake", "The meeting moved to Thursday at ten."]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = write_pairs(tmp_path_factory.mktemp("gen") / "data")
    model, tok = tiny.model("llama"), tiny.tokenizer()
    tok.padding_side, tok.pad_token = "left", "<pad>"
    data = load_pairs(root)
    # fitted at the last token: these tests read single tokens (a last-K probe's windowed readings: test_trace_window)
    return model, tok, data, PairedProbe.fit(model, tok, data, width=2, position="last")


def _uncached_columns(model, tok, probe, ids):
    """The probe's columns at every position of ``ids`` [T] from a plain forward with output_hidden_states."""
    with torch.no_grad():
        hs = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
    layers = probe.scoring_layers()
    x = torch.stack([hs[layer][0] for layer in layers], dim=1)  # [T, nL, D]
    dirs = probe.directions_for(layers)  # [nL, K, D]
    proj = torch.einsum("tld,lkd->tlk", x, dirs)
    return probe.columns(proj, x.norm(dim=-1), layers)


def test_trace_readings_equal_an_uncached_forward_of_the_same_tokens(fitted):
    model, tok, _, probe = fitted
    t = trace(model, tok, PROMPTS, probe, max_new_tokens=6)
    texts = json.loads(t.schema.metadata[b"generated_texts"])
    assert len(texts) == len(PROMPTS)
    rows = t.to_pylist()
    assert {r["prompt_id"] for r in rows} == {"0", "1", "2"}
    for pid in range(len(PROMPTS)):
        mine = [r for r in rows if r["prompt_id"] == str(pid)]
        assert [r["token_index"] for r in mine] == list(range(len(mine)))
        assert any(r["is_generated"] for r in mine) and not mine[0]["is_generated"]
        enc, _ = encode_prompts(
            tok, [PROMPTS[pid]], chat_template=True, system_prompt=probe.extraction()["system_prompt"], device="cpu"
        )
        n_prompt = enc.shape[1]
        assert sum(not r["is_generated"] for r in mine) == n_prompt
    # the oracle: rerun prompt + generated tokens without a cache, unbatched
    enc, mask = encode_prompts(
        tok, PROMPTS, chat_template=True, system_prompt=probe.extraction()["system_prompt"], device="cpu"
    )
    out = model.generate(
        input_ids=enc, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id
    )
    for pid in range(len(PROMPTS)):
        mine = [r for r in rows if r["prompt_id"] == str(pid)]
        real = out[pid][mask[pid].bool().tolist() + [True] * (out.shape[1] - enc.shape[1])].tolist()[: len(mine)]
        ref = _uncached_columns(model, tok, probe, real)
        calibrated = np.array([r["calibrated"] for r in mine])
        assert calibrated.sum() == 1 and not mine[int(np.flatnonzero(calibrated)[0]) + 1]["calibrated"]
        assert mine[int(np.flatnonzero(calibrated)[0]) + 1]["is_generated"]  # the last prompt token
        for name in probe.column_names():
            got = np.array([r[name] for r in mine], dtype=float)
            if name.startswith("p_"):  # percentages only where the probe was calibrated
                assert np.isnan(got[~calibrated]).all()
                np.testing.assert_allclose(got[calibrated], ref[name][calibrated], atol=2e-4, rtol=1e-3)
            else:
                np.testing.assert_allclose(got, ref[name], atol=2e-4, rtol=1e-3)


def test_last_prompt_token_reads_as_the_probe_score(fitted):
    model, tok, _, probe = fitted
    t = trace(model, tok, PROMPTS, probe, max_new_tokens=2).to_pylist()
    scores = probe.score(model, tok, PROMPTS)
    for pid in range(len(PROMPTS)):
        last_prompt = [r for r in t if r["prompt_id"] == str(pid) and not r["is_generated"]][-1]
        for name in probe.names:
            assert last_prompt[name] == pytest.approx(float(scores[name][pid]), abs=2e-4)


def test_include_prompt_false_and_generated_only(fitted):
    model, tok, _, probe = fitted
    t = trace(model, tok, PROMPTS[:1], probe, max_new_tokens=4, include_prompt=False).to_pylist()
    assert t and all(r["is_generated"] for r in t)


@pytest.mark.parametrize("kind", ["mean-diff", "probe"])
def test_steering_moves_the_steered_layer_by_alpha_sigma(fitted, kind):
    model, tok, data, probe = fitted
    name = "sad_vs_happy"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vecs = steering_vectors(model, tok, probe, data, pairs=[name], kind=kind)
    assert vecs[name] and set(vecs[name]) <= set(probe.chosen[name])
    skipped = set(probe.chosen[name]) - set(vecs[name])
    # only a layer where every text has the same state (layer 0 at the template's last token) is skipped, with a warning
    assert skipped <= {0} and (not skipped or any("does not vary" in str(w.message) for w in caught))
    layer = sorted(vecs[name])[0]
    d, sigma = vecs[name][layer]
    assert sigma > 0 and abs(float(d.norm()) - 1) < 1e-5
    if kind == "probe":
        p = probe.names.index(name)
        assert torch.allclose(d, probe.directions[p, probe.layers.index(layer)], atol=1e-6)
    else:  # the normalised difference of the side means, recomputed here from extract
        left, right = data.pair(name).split("train")
        x = emofast.extract(model, tok, left + right, layers=[layer], **probe.extraction())[:, 0].double()
        md = x[: len(left)].mean(0) - x[len(left) :].mean(0)
        assert torch.allclose(d.double(), md / md.norm(), atol=1e-5)
    enc, mask = encode_prompts(tok, PROMPTS, chat_template=True, system_prompt=None, device="cpu")
    probe_d = torch.as_tensor(d, dtype=torch.float32)

    def read(alpha, where):
        with Steering(model, probe, {name: alpha}, vectors=vecs, where=where):
            with torch.no_grad():
                hs = []
                from emofast.capture.models import resolve_layout
                from emofast.generation.hooks import residual_hook

                h = residual_hook(resolve_layout(model), layer, lambda x: hs.append(x.clone()))
                try:
                    model(input_ids=enc, attention_mask=mask)
                finally:
                    h.remove()
        return hs[0] @ probe_d  # [B, T]

    base = read(0.0, "all")
    moved = read(3.0, "all")
    np.testing.assert_allclose((moved - base).numpy(), 3.0 * sigma, rtol=1e-3, atol=1e-4)
    gen = read(3.0, "generated")  # the prompt step: only the last position is steered
    np.testing.assert_allclose(gen[:, :-1].numpy(), base[:, :-1].numpy(), atol=1e-5)
    np.testing.assert_allclose((gen[:, -1] - base[:, -1]).numpy(), 3.0 * sigma, rtol=1e-3, atol=1e-4)


def test_random_vectors_match_the_scale_and_the_cosines_between_layers():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(64, generator=g)
    real = [base + 0.5 * torch.randn(64, generator=g) for _ in range(3)]  # neighbouring layers point alike
    vecs = {"a_vs_b": {k: (v / v.norm(), 2.0 + k) for k, v in enumerate(real)}}
    rand = random_vectors(vecs, seed=1)["a_vs_b"]
    R = torch.stack([rand[k][0] for k in range(3)]).double()
    D = torch.stack([vecs["a_vs_b"][k][0] for k in range(3)]).double()
    assert torch.allclose(R @ R.T, D @ D.T, atol=1e-5)  # the same Gram matrix: the band's pushes add up alike
    assert [rand[k][1] for k in range(3)] == [2.0, 3.0, 4.0]
    assert (R * D).sum(-1).abs().max() < 0.6  # and yet other directions


def test_steering_hooks_are_removed_and_zero_alpha_changes_nothing(fitted):
    model, tok, data, probe = fitted
    vecs = steering_vectors(model, tok, probe, data)

    def n_hooks():
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())

    before = n_hooks()  # transformers keeps hooks of its own on some modules
    plain = steer(model, tok, PROMPTS, probe, {"sad_vs_happy": 0.0}, vectors=vecs, max_new_tokens=5)
    pushed = steer(model, tok, PROMPTS, probe, {"sad_vs_happy": 50.0}, vectors=vecs, max_new_tokens=5, where="all")
    again = steer(model, tok, PROMPTS, probe, {"sad_vs_happy": 0.0}, vectors=vecs, max_new_tokens=5)
    assert plain == again
    assert pushed != plain
    assert n_hooks() == before


def test_steer_with_trace_reads_the_steered_states(fitted):
    model, tok, data, probe = fitted
    vecs = steering_vectors(model, tok, probe, data)
    name = "sad_vs_happy"
    _, t0 = steer(model, tok, PROMPTS[:1], probe, {name: 0.0}, vectors=vecs, max_new_tokens=4, trace=True)
    _, t1 = steer(model, tok, PROMPTS[:1], probe, {name: 8.0}, vectors=vecs, max_new_tokens=4, trace=True)
    g0 = [r[name] for r in t0.to_pylist() if r["is_generated"]]
    g1 = [r[name] for r in t1.to_pylist() if r["is_generated"]]
    assert np.mean(g1) > np.mean(g0)


def test_bad_input(fitted):
    model, tok, _, probe = fitted
    with pytest.raises(ValueError, match="unknown pair"):
        Steering(model, probe, {"joy_vs_grief": 1.0}, vectors={})
    with pytest.raises(ValueError, match="where"):
        Steering(model, probe, {"sad_vs_happy": 1.0}, vectors={}, where="prompt")
    with pytest.raises(ValueError, match="kind"):
        steering_vectors(model, tok, probe, kind="lda")
    with pytest.raises(ValueError, match="empty"):
        trace(model, tok, [""], probe)
    assert emofast.trace is trace and emofast.steer is steer


def test_cli_trace_and_generate(fitted, tmp_path, capsys):
    from emofast.cli import main

    model, tok, data, probe = fitted
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    probe.save(tmp_path / "run")
    base = ["--model", str(tmp_path / "model"), "--probe", str(tmp_path / "run"), "--max-new-tokens", "3"]
    out = tmp_path / "t.parquet"
    rc = main(
        [
            "trace",
            *base,
            "--prompt",
            "I lost my keys.",
            "--prompt",
            "We sat by the lake",
            "--out",
            str(out),
            "--plot",
            str(tmp_path / "t.png"),
            "--html",
            str(tmp_path / "t.html"),
            "--no-progress",
        ]
    )
    assert rc == 0
    import pyarrow.parquet as pq

    t = pq.read_table(out)
    assert set(t.column("prompt_id").to_pylist()) == {"0", "1"} and "sad_vs_happy" in t.column_names
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"
    page = (tmp_path / "t.html").read_text()
    assert "<span class='t gen'" in page and "sad_vs_happy" in page
    rc = main(["generate", *base, "--prompt", "I lost my keys.", "--steer", "sad_vs_happy=+4", "--no-progress"])
    assert rc == 0 and "[0]" in capsys.readouterr().out
    assert main(["generate", *base, "--prompt", "x", "--steer", "sad_vs_happy"]) == 2
    assert "PAIR=ALPHA" in capsys.readouterr().err
    sc = ["steer-check", *base, "--prompts", "3", "--calibration-prompts", "2", "--judges", "vader,empath"]
    rc = main([*sc, "--n-boot", "20", "--grid", "1", "--greedy", "--no-progress"])
    assert rc == 0
    said = capsys.readouterr().out
    assert "sad_vs_happy: alphas" in said and "vader: rho" in said
    summary = json.loads((tmp_path / "run" / "steer-check" / "summary.json").read_text())
    assert summary["alphas"] == "calibrated" and set(summary["verdict"]) == set(probe.names)
    assert list((tmp_path / "run").glob("steering-vectors-*.safetensors"))  # measured once, kept in the run
    assert main([*sc, "--alphas", "x,1"]) == 2
    assert "--alphas" in capsys.readouterr().err


def test_steer_check_writes_its_files_and_reuses_the_same_prompts(fitted, tmp_path):
    """Fixed alphas, every pair, a plugged-in judge: the files, the rows, and alpha 0 = plain generation."""
    from emofast.commands.steer_check import steer_check
    from emofast.data.prompts import steer_prompts
    from emofast.generation.damage import generate_rows
    from emofast.generation.judges import register_judge

    class Length:  # a judge the user brings: longer text = "more left"
        name = "length"

        def expected_sign(self, left, right):
            return 1

        def score(self, texts, left, right):
            return np.array([float(len(t)) for t in texts])

    register_judge("length", Length)
    model, tok, data, probe = fitted
    res = steer_check(
        model,
        tok,
        probe,
        "all",
        tmp_path / "sc",
        alphas=(-4, 4),
        n_prompts=4,
        max_new_tokens=3,
        n_boot=50,
        data=data,
        judges=("vader", "length"),
        do_sample=False,
        progress=False,
    )
    assert res["alphas"] == [-4.0, 0.0, 4.0] and res["n_prompts"] == 4 and res["format"] == 2
    assert set(res["verdict"]) == set(probe.names)
    rows = [json.loads(x) for x in (tmp_path / "sc" / "steer.jsonl").read_text().splitlines()]
    n_pairs = len(probe.names)
    # per prompt: 1 unsteered row (judged for every pair), per pair 2 alphas x 2 directions + 2 instructions
    assert res["rows_generated"] == 4 * (1 + n_pairs * (4 + 2))
    assert len(rows) == 4 * n_pairs * (1 + 4 + 2)
    assert {r["direction"] for r in rows} == {"none", "probe", "random", "prompt"}
    prompted = [r for r in rows if r["direction"] == "prompt"]
    assert {r["instructed"] for r in prompted} == {"left", "right"}
    # the unsteered rows are plain generation with the same prompts (greedy: batch composition does not matter)
    plain = generate_rows(
        model,
        tok,
        [t for _, t in steer_prompts(4)],
        [{}] * 4,
        {},
        system_prompt=probe.extraction()["system_prompt"],
        max_new_tokens=3,
        damage=False,
    )
    none = [r for r in rows if r["direction"] == "none" and r["pair"] == probe.names[0]]
    assert [r["text"] for r in none] == plain["texts"]
    assert all(r["kl"] == pytest.approx(0, abs=1e-4) for r in none if r["n_tokens"])
    sp = {(s["arm"], s["direction"], s["measure"]) for s in res["spearman"]}
    assert ("sad_vs_happy", "random", "length") in sp and ("sad_vs_happy", "probe", "vader") in sp
    for name in ("summary.csv", "spearman.csv", "effects.csv", "summary.json", "dose_response.png"):
        assert (tmp_path / "sc" / name).is_file()
    assert res["verdict"]["sad_vs_happy"]["judges"]["vader"]["expected_sign"] == -1  # sad is less pleasant
    assert {e["judge"] for e in res["effects"]} == {"vader", "length"}
    lengths = [r["length"] for r in rows]
    assert lengths == [float(len(r["text"])) for r in rows]


def test_trace_readings_a_person_can_read(fitted, tmp_path):
    """Per-token readings get a neutral per-token reference (tz_ columns: neutral text reads about 0, spread 1),
    sinks are marked and kept out of the colour scale, and the HTML of a plain prompt has valid legend swatches
    and colours that vary over the generated tokens."""
    import re

    from emofast.generation.trace import token_reference
    from emofast.report.steering import fig_trace, trace_html

    model, tok, _, probe = fitted
    neutral = ["The bus leaves at nine.", "Put the forms in the blue tray.", "The shop shuts at six on Sunday."]
    ref = token_reference(model, tok, probe, neutral)
    assert ref["_n_tokens"] > 20 and set(ref) >= {"sad_vs_happy"}
    t = trace(model, tok, neutral, probe, max_new_tokens=4, reference=ref).to_pylist()
    for name in ("sad_vs_happy",):
        tz = np.array([r[f"tz_{name}"] for r in t if not r["is_sink"] and not r["is_generated"]])
        assert abs(tz.mean()) < 0.5 and 0.5 < tz.std() < 1.5  # the reference's own texts read ~0, in sd units
        mu, sd = ref[name]
        r0 = t[0]
        assert r0[f"tz_{name}"] == pytest.approx((r0[name] - mu) / sd, rel=1e-4, abs=1e-4)
    rows = trace(model, tok, ["Describe your street."], probe, max_new_tokens=8).to_pylist()
    assert "tz_sad_vs_happy" in rows[0] and probe.token_reference is not None  # the bundled neutral default
    # a sink, simulated: the first token reads enormous; it must not flatten the others' colours
    rows[0] = {**rows[0], "is_sink": True, **{k: 1e4 for k in rows[0] if k.startswith("tz_")}}
    page = trace_html(rows)
    for swatch in re.findall(r"class='swatch' style='background:([^;']+)", page):
        assert re.fullmatch(r"#[0-9a-f]{8}", swatch), swatch
    gen = re.findall(r"<span class='t gen[^']*' style='background:([^']+)'", page)
    assert len(gen) >= 4 and len(set(gen)) > 1  # colours vary over the generated tokens
    assert "t sink" in page and "transparent" in page.split("t sink")[1][:40]
    assert fig_trace(rows, "0")[:4] == b"\x89PNG"


def test_token_reference_is_keyed_and_never_measured_steered(fitted):
    """The cached per-token reference belongs to one model and template: another template measures anew; inside
    Steering a missing reference is a clear error, an existing one is reused."""
    from emofast.generation.trace import token_reference

    model, tok, data, probe = fitted
    probe.token_reference = None
    ref = token_reference(model, tok, probe)
    assert token_reference(model, tok, probe) is ref  # cached
    plain = token_reference(model, tok, probe, chat_template=False)
    assert plain is not ref and plain["_key"] != ref["_key"]
    with emofast.Steering(model, probe, {"sad_vs_happy": 2.0}, tok=tok):
        assert token_reference(model, tok, probe, chat_template=False) is plain  # the cached, unsteered one
        probe.token_reference = None
        with pytest.raises(RuntimeError, match="unsteered"):
            token_reference(model, tok, probe)
    assert getattr(model, "emofast_steering_active", 0) == 0


def test_trace_corpus_with_repeated_ids_across_files(fitted, tmp_path):
    """A folder of JSONL files without ids numbers each file's lines from 1, so one chunk holds the same id twice:
    the trace and its per-generation summary still come out, one summary row per prompt, the user's ids kept."""
    import pyarrow.parquet as pq

    from emofast.commands.trace_corpus import summary_path, trace_corpus

    model, tok, _, probe = fitted
    folder = tmp_path / "prompts"
    folder.mkdir()
    for name in ("a", "b"):
        (folder / f"{name}.jsonl").write_text(
            "".join(json.dumps({"text": f"Describe {name} {k}."}) + "\n" for k in range(2))
        )
    out = tmp_path / "t.parquet"
    trace_corpus(model, tok, probe, folder, out, chunk_size=8, max_new_tokens=3, progress=False)
    summary = pq.read_table(summary_path(out)).to_pylist()
    assert len(summary) == 4 and sorted(r["prompt_id"] for r in summary) == ["1", "1", "2", "2"]
    rows = pq.read_table(out).to_pylist()
    assert {r["prompt_id"] for r in rows} == {"1", "2"} and sum(r["n_generated"] for r in summary) > 0
