"""Per-row steering: each row of a batch with its own setting (and vectors) gives what one call per setting gives,
alpha-0 rows are unsteered generation, and bad shapes fail with a clear message."""

from __future__ import annotations

import numpy as np
import pytest
import tiny
import torch
from test_workflow import write_pairs

from emofast.data import load_pairs
from emofast.generation import Steering, steer, steering_vectors
from emofast.generation.damage import generate_rows, mean_kl, pooled_ppl
from emofast.generation.plan import as_settings, row_additions
from emofast.generation.steer import AddSteering, random_vectors
from emofast.generation.trace import encode_prompts
from emofast.probe import PairedProbe

PROMPTS = ["I lost my keys on the train.", "We sat by the lake", "The meeting moved to Thursday at ten."]
NAME = "angry_vs_calm"  # the tiny model's pair with a usable spread (sigma) at its chosen layers


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = write_pairs(tmp_path_factory.mktemp("rows") / "data")
    model, tok = tiny.model("llama"), tiny.tokenizer()
    tok.padding_side, tok.pad_token = "left", "<pad>"
    data = load_pairs(root)
    probe = PairedProbe.fit(model, tok, data, width=2)
    return model, tok, probe, steering_vectors(model, tok, probe, data)


def test_row_additions_sum_pairs_per_row_and_take_per_row_tables():
    a = {"p": {1: (torch.tensor([1.0, 0.0]), 2.0)}, "q": {1: (torch.tensor([0.0, 1.0]), 1.0), 2: (torch.ones(2), 3.0)}}
    b = {"p": {1: (torch.tensor([0.0, -1.0]), 2.0)}}
    add = row_additions([{"p": 1.0, "q": 2.0}, {}, {"p": 0.5}], a)
    assert set(add) == {1, 2}
    assert add[1].tolist() == [[2.0, 2.0], [0.0, 0.0], [1.0, 0.0]]
    assert add[2].tolist() == [[6.0, 6.0], [0.0, 0.0], [0.0, 0.0]]
    per_row = row_additions([{"p": 1.0}, {"p": 1.0}], [a, b])  # row 2: the control's table
    assert per_row[1].tolist() == [[2.0, 0.0], [0.0, -2.0]]
    assert row_additions([{"p": 0.0}, {}], a) == {}  # alpha 0 adds nothing anywhere
    with pytest.raises(ValueError, match="no steering vectors for pair 'r'"):
        row_additions([{"r": 1.0}], a)
    with pytest.raises(ValueError, match="2 vector tables for 1 rows"):
        row_additions([{"p": 1.0}], [a, b])
    assert as_settings({"p": 1.0}, 2) == [{"p": 1.0}, {"p": 1.0}]
    assert as_settings([None, {"p": 2}]) == [{}, {"p": 2}]
    with pytest.raises(ValueError, match="one per prompt"):
        as_settings([{"p": 1.0}], 3)
    with pytest.raises(TypeError, match="alphas"):
        as_settings("p=1")


def test_per_row_batch_equals_one_call_per_setting_greedy(fitted):
    model, tok, probe, vecs = fitted
    rand = random_vectors(vecs, seed=3)
    conditions = [(vecs, -20.0), (vecs, 0.0), (vecs, 20.0), (rand, 20.0), (vecs, -8.0)]
    kw = {"system_prompt": probe.extraction()["system_prompt"], "max_new_tokens": 6}
    # one generate call per condition (the old way)
    per_call = {
        k: generate_rows(model, tok, PROMPTS, [{NAME: a}] * len(PROMPTS), v, **kw)
        for k, (v, a) in enumerate(conditions)
    }
    # every condition of a prompt in the same batch, each row its own vectors and alpha
    rows = [(i, k) for i in range(len(PROMPTS)) for k in range(len(conditions))]
    got = generate_rows(
        model,
        tok,
        [PROMPTS[i] for i, _ in rows],
        [{NAME: conditions[k][1]} for _, k in rows],
        [conditions[k][0] for _, k in rows],
        **kw,
    )
    assert got["token_ids"] == [per_call[k]["token_ids"][i] for i, k in rows]
    np.testing.assert_allclose(got["nll"], [per_call[k]["nll"][i] for i, k in rows], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got["kl"], [per_call[k]["kl"][i] for i, k in rows], rtol=1e-3, atol=1e-4)
    assert len({tuple(per_call[k]["token_ids"][0]) for k in per_call}) > 2  # the conditions differ
    # alpha-0 rows equal plain, unsteered generation, and steered rows differ from it
    plain = generate_rows(model, tok, PROMPTS, [{}] * len(PROMPTS), {}, **kw)
    assert [t for (i, k), t in zip(rows, got["token_ids"]) if k == 1] == plain["token_ids"]
    # the same through the public API (texts), per-row against one call per setting
    texts = steer(
        model,
        tok,
        [PROMPTS[i] for i, _ in rows],
        probe,
        [{NAME: conditions[k][1]} for _, k in rows],
        vectors=[conditions[k][0] for _, k in rows],
        max_new_tokens=6,
    )
    one = {
        k: steer(model, tok, PROMPTS, probe, {NAME: a}, vectors=v, max_new_tokens=6)
        for k, (v, a) in enumerate(conditions)
    }
    assert texts == [one[k][i] for i, k in rows]


def test_damage_is_zero_unsteered_and_grows_with_alpha(fitted):
    from emofast.generation.judge import perplexity

    model, tok, probe, vecs = fitted
    sp = probe.extraction()["system_prompt"]
    out = generate_rows(
        model,
        tok,
        PROMPTS[:2] * 3,
        [{}] * 2 + [{NAME: 8.0}] * 2 + [{NAME: 40.0}] * 2,
        vecs,
        system_prompt=sp,
        max_new_tokens=6,
    )
    assert (out["n_tokens"] > 0).all()
    np.testing.assert_allclose(out["kl"][:2], 0.0, atol=1e-4)  # steered == unsteered distributions
    mean_kl_of = [mean_kl(out["kl"][i : i + 2], out["n_tokens"][i : i + 2]) for i in (0, 2, 4)]
    assert mean_kl_of[0] < mean_kl_of[1] < mean_kl_of[2]
    # nll: the same perplexity the old per-text measure gives (re-tokenised text; equal when it round-trips)
    ids, mask = encode_prompts(tok, PROMPTS[:2] * 3, chat_template=True, system_prompt=sp, device="cpu")
    prompt_ids = [r[m.bool()].tolist() for r, m in zip(ids, mask)]
    ref = perplexity(model, tok, prompt_ids, out["texts"])
    for i, t in enumerate(out["token_ids"]):
        if tok(out["texts"][i], add_special_tokens=False)["input_ids"] == t:
            assert np.exp(out["nll"][i] / out["n_tokens"][i]) == pytest.approx(ref[i], rel=1e-3)
    assert pooled_ppl(out["nll"][:2], out["n_tokens"][:2]) == pytest.approx(
        float(np.exp(out["nll"][:2].sum() / out["n_tokens"][:2].sum()))
    )
    assert np.isnan(pooled_ppl([np.nan], [0]))


def test_per_row_batches_smaller_than_the_rows_and_trace(fitted):
    model, tok, probe, vecs = fitted
    settings = [{NAME: a} for a in (-6.0, 0.0, 6.0)]
    whole = steer(model, tok, [PROMPTS[0]] * 3, probe, settings, vectors=vecs, max_new_tokens=5)
    split = steer(model, tok, [PROMPTS[0]] * 3, probe, settings, vectors=vecs, max_new_tokens=5, batch_size=2)
    assert split == whole
    texts, table = steer(model, tok, [PROMPTS[0]] * 3, probe, settings, vectors=vecs, max_new_tokens=5, trace=True)
    assert texts == whole
    assert sorted(set(table.column("prompt_id").to_pylist())) == ["0", "1", "2"]
    gen = {pid: [] for pid in "012"}
    for r in table.to_pylist():
        if r["is_generated"]:
            gen[r["prompt_id"]].append(r[NAME])
    # the reading sees the steered states: pushing toward the left side reads further left
    assert sum(gen["2"]) / len(gen["2"]) > sum(gen["0"]) / len(gen["0"])


def test_per_row_steering_refuses_a_batch_of_another_size(fitted):
    model, tok, probe, vecs = fitted
    ids, mask = encode_prompts(tok, PROMPTS, chat_template=True, system_prompt=None, device="cpu")
    with Steering(model, probe, [{NAME: 1.0}, {NAME: 2.0}], vectors=vecs):
        with pytest.raises(ValueError, match="2 settings but the batch has 3 rows"):
            model(input_ids=ids, attention_mask=mask)
    with pytest.raises(ValueError, match="one per prompt"):
        steer(model, tok, PROMPTS, probe, [{NAME: 1.0}], vectors=vecs)
    with pytest.raises(ValueError, match="unknown pair"):
        Steering(model, probe, [{NAME: 1.0}, {"x_vs_y": 1.0}], vectors=vecs)


def test_add_steering_applies_a_plan_row_by_row(fitted):
    model, tok, probe, vecs = fitted
    layer = sorted(vecs[NAME])[0]
    d, sigma = vecs[NAME][layer]
    ids, mask = encode_prompts(tok, PROMPTS[:2], chat_template=True, system_prompt=None, device="cpu")
    from emofast.capture.models import resolve_layout
    from emofast.generation.hooks import residual_hook

    def read(adds):
        seen = []
        with AddSteering(model, adds, where="all"):
            h = residual_hook(resolve_layout(model), layer, lambda x: seen.append(x.clone()))
            try:
                with torch.no_grad():
                    model(input_ids=ids, attention_mask=mask)
            finally:
                h.remove()
        return seen[0] @ d  # [B, T]

    base = read({})
    moved = read(row_additions([{NAME: 2.0}, {}], vecs))
    torch.testing.assert_close(moved[0] - base[0], torch.full_like(base[0], 2.0 * sigma), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(moved[1], base[1])
