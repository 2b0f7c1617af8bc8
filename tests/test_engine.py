"""The capture engine against the reference loop of the original study, on tiny random models."""

from __future__ import annotations

import subprocess
import sys

import pytest
import tiny
import torch
from torch import nn

import emofast
from emofast.capture.plan import NonFiniteError, plan_batches

SYSTEM = "You are a helpful assistant."
TEXTS = [
    "I lost my keys on the train.",
    "She laughed.",
    "The meeting moved to Thursday at ten in room four, and then again to Friday after lunch.",
    "He slammed the door.",
    "We sat by the lake and watched the sun go down.",
    "My hands shook as the doctor opened the envelope.",
    "ok",
]


@pytest.fixture(scope="module")
def tok():
    t = tiny.tokenizer()
    emofast.capture.models.prepare_tokenizer(t)
    return t


def prompts_for(tok, texts, chat_template, system_prompt=SYSTEM):
    if not chat_template:
        return list(texts)
    head = [] if system_prompt is None else [{"role": "system", "content": system_prompt}]
    return [
        tok.apply_chat_template(head + [{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True)
        for t in texts
    ]


def reference_rows(model, tok, prompts):
    """The study's loop: generate one token with output_hidden_states, last position of every entry."""
    enc = tok(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(
            **enc,
            max_new_tokens=1,
            output_hidden_states=True,
            return_dict_in_generate=True,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
        )
    return torch.stack([h[:, -1, :] for h in out.hidden_states[0]], dim=1).float()


def single_states(model, tok, prompt):
    """Unpadded forward of one prompt: all hidden states [L+1, T, D]."""
    enc = tok([prompt], return_tensors="pt")
    with torch.no_grad():
        out = model(**enc, output_hidden_states=True)
    return torch.stack([h[0] for h in out.hidden_states]).float()


@pytest.fixture(scope="module", params=tiny.ARCHS)
def arch_model(request):
    return request.param, tiny.model(request.param)


@pytest.mark.parametrize("chat_template", [False, True])
def test_parity_with_reference_loop(arch_model, tok, chat_template):
    arch, model = arch_model
    ref = reference_rows(model, tok, prompts_for(tok, TEXTS, chat_template))
    sp = SYSTEM if chat_template else None
    for bs in (1, 3, 16):
        got = emofast.extract(model, tok, TEXTS, chat_template=chat_template, system_prompt=sp, batch_size=bs)
        assert got.shape == ref.shape == (len(TEXTS), model.config.num_hidden_layers + 1, 32)
        assert got.dtype == torch.float32 and got.device.type == "cpu"
        err = (got - ref).abs().max().item()
        assert err <= 1e-4, f"{arch} chat={chat_template} batch={bs}: max abs diff {err}"


def test_padding_is_correct_for_absolute_positions(tok):
    """GPT-2 needs position_ids from the mask: padded batches must equal unpadded single texts."""
    model = tiny.model("gpt2")
    got = emofast.extract(model, tok, TEXTS, batch_size=16)
    for i, t in enumerate(TEXTS):
        single = single_states(model, tok, t)[:, -1]
        assert torch.allclose(got[i], single, atol=1e-5), i


def test_no_system_turn_when_system_prompt_is_none(tok):
    model = tiny.model("llama")
    ref = reference_rows(model, tok, prompts_for(tok, TEXTS, True, system_prompt=None))
    got = emofast.extract(model, tok, TEXTS, chat_template=True)
    assert (got - ref).abs().max() <= 1e-4
    with_system = emofast.extract(model, tok, TEXTS, chat_template=True, system_prompt=SYSTEM)
    assert (got - with_system).abs().max() > 1e-3


@pytest.mark.parametrize("arch", ["llama", "gpt2", "falcon", "gemma2"])
@pytest.mark.parametrize("chat_template", [False, True])
def test_mean_and_int_positions(tok, arch, chat_template):
    model = tiny.model(arch)
    sp = SYSTEM if chat_template else None
    prompts = prompts_for(tok, TEXTS, chat_template)
    singles = [single_states(model, tok, p) for p in prompts]
    mean = emofast.extract(
        model, tok, TEXTS, position="mean", chat_template=chat_template, system_prompt=sp, batch_size=3
    )
    for i, s in enumerate(singles):
        assert torch.allclose(mean[i], s.mean(dim=1), atol=1e-5), i
    for pos in (0, 2, -1, -3):
        got = emofast.extract(
            model, tok, TEXTS[:-1], position=pos, chat_template=chat_template, system_prompt=sp, batch_size=3
        )
        for i, s in enumerate(singles[:-1]):
            assert torch.allclose(got[i], s[:, pos], atol=1e-5), (pos, i)
    for k in (3, 8, 10_000):  # mean over the last k tokens; past a text's length, over all of it
        got = emofast.extract(
            model, tok, TEXTS, position=f"last-{k}", chat_template=chat_template, system_prompt=sp, batch_size=3
        )
        for i, s in enumerate(singles):
            assert torch.allclose(got[i], s[:, -k:].mean(dim=1), atol=1e-5), (k, i)


def test_last_k_position_names():
    from emofast.capture.plan import position_window, resolve_position

    assert resolve_position("last-1") == "last" and resolve_position("last-8") == "last-8"
    assert [position_window(p) for p in ("last", "last-8", "mean", -1)] == [1, 8, None, None]
    for bad in ("last-0", "last-", "last-x", "last8", "first"):
        with pytest.raises(ValueError, match="last-K"):
            resolve_position(bad)


def test_int_position_outside_a_text_is_an_error(tok):
    model = tiny.model("llama")
    with pytest.raises(IndexError, match=r"position=50 is outside texts\[2\], which has \d+ tokens"):
        emofast.extract(model, tok, TEXTS[1:3] + TEXTS[:1], position=50)


@pytest.mark.parametrize("arch", ["llama", "gpt_neox", "phi3"])
def test_shared_prefix_equals_full_prompts(tok, arch):
    model = tiny.model(arch)
    for position in ("last", "mean", 1, -2, "last-4", "last-10000"):  # the last reaches into the prefix
        a = emofast.extract(
            model,
            tok,
            TEXTS,
            chat_template=True,
            system_prompt=SYSTEM,
            position=position,
            share_prefix=True,
            batch_size=4,
        )
        b = emofast.extract(
            model,
            tok,
            TEXTS,
            chat_template=True,
            system_prompt=SYSTEM,
            position=position,
            share_prefix=False,
            batch_size=4,
        )
        assert (a - b).abs().max() <= 1e-5, position


def test_shared_prefix_is_computed_once(tok, monkeypatch):
    model = tiny.model("llama")
    widths = []
    hook = model.model.layers[0].register_forward_pre_hook(lambda m, args: widths.append(args[0].shape[1]))
    try:
        emofast.extract(model, tok, TEXTS, chat_template=True, system_prompt=SYSTEM, batch_size=4, layers=[1])
    finally:
        hook.remove()
    prompts = prompts_for(tok, TEXTS, True)
    full = max(len(tok(p).input_ids) for p in prompts)
    # one prefix pass, then two batches that are each shorter than the full prompts
    assert len(widths) == 3
    assert all(w < full for w in widths[1:]), (widths, full)


def test_sliding_window_batches_fall_back_to_full_prompts(tok):
    """Padding between a cached prefix and a text would shift a sliding window: such batches run whole."""
    model = tiny.model("gemma2")  # sliding_window = 64 in the tiny config
    texts = TEXTS + [" ".join(["the quick brown fox jumps over the lazy dog"] * 4)]
    ref = reference_rows(model, tok, prompts_for(tok, texts, True))
    got = emofast.extract(model, tok, texts, chat_template=True, system_prompt=SYSTEM, batch_size=3)
    assert (got - ref).abs().max() <= 1e-4


@pytest.mark.parametrize("arch", ["llama", "falcon", "gpt2"])
def test_early_exit_equals_full_run(tok, arch):
    model = tiny.model(arch)
    full = emofast.extract(model, tok, TEXTS, chat_template=True, system_prompt=SYSTEM)
    calls = []
    hooks = [
        b.register_forward_hook(lambda *a, i=i: calls.append(i))
        for i, b in enumerate(emofast.resolve_layout(model).blocks)
    ]
    try:
        part = emofast.extract(
            model, tok, TEXTS, chat_template=True, system_prompt=SYSTEM, layers=[1, 0], batch_size=16
        )
    finally:
        for h in hooks:
            h.remove()
    assert torch.equal(part, full[:, [1, 0]]) or (part - full[:, [1, 0]]).abs().max() <= 1e-6
    assert set(calls) == {0}, f"blocks after the deepest requested layer ran: {sorted(set(calls))}"
    last = emofast.extract(model, tok, TEXTS, layers=[-1])
    assert (last[:, 0] - emofast.extract(model, tok, TEXTS)[:, -1]).abs().max() <= 1e-6


def test_lm_head_never_runs(tok):
    model = tiny.model("llama")
    ran = []
    h = model.lm_head.register_forward_hook(lambda *a: ran.append(1))
    try:
        emofast.extract(model, tok, TEXTS)
    finally:
        h.remove()
    assert not ran


def test_token_budget_batches(tok):
    model = tiny.model("qwen2")
    a = emofast.extract(model, tok, TEXTS, batch_size=16)
    b = emofast.extract(model, tok, TEXTS, max_tokens=40)
    assert (a - b).abs().max() <= 1e-5
    lengths = [30, 5, 12, 12, 40]
    batches = plan_batches(lengths, 16, 40)
    assert [[int(i) for i in x] for x in batches] == [[4], [0], [2, 3, 1]]  # 3 x 12 <= 40
    assert sorted(int(i) for b in batches for i in b) == list(range(5))


def test_bert_style_encoder(tok):
    model = tiny.bert()
    layout = emofast.resolve_layout(model)
    assert layout.blocks_path == "encoder.layer" and layout.final_norm is None and not layout.causal
    got = emofast.extract(model, tok, TEXTS, batch_size=3)
    for i, t in enumerate(TEXTS):
        enc = tok([t], return_tensors="pt")
        with torch.no_grad():
            hs = model(**enc, output_hidden_states=True).hidden_states
        ref = torch.stack([h[0, -1] for h in hs])
        assert torch.allclose(got[i], ref, atol=1e-5), i


class _Opaque(nn.Module):
    """A model emofast cannot map: its blocks sit under an unusual name."""

    def __init__(self, inner):
        super().__init__()
        self.config = inner.config
        self.wrapped = inner.model

    def get_input_embeddings(self):
        return self.wrapped.embed_tokens

    def forward(self, **kw):
        return self.wrapped(**kw)


def test_unknown_architecture_error_and_blocks_override(tok):
    inner = tiny.model("llama")
    opaque = _Opaque(inner)
    opaque.config = type(inner.config)(**{**inner.config.to_dict(), "num_hidden_layers": 5})
    with pytest.raises(ValueError, match=r"_Opaque.*blocks=\"model\.layers\""):
        emofast.extract(opaque, tok, TEXTS)
    got = emofast.extract(opaque, tok, TEXTS, blocks="wrapped.layers", final_norm="wrapped.norm")
    assert (got - emofast.extract(inner, tok, TEXTS)).abs().max() <= 1e-6


def test_bad_inputs(tok):
    model = tiny.model("llama")
    empty = emofast.extract(model, tok, [])
    assert empty.shape == (0, 4, 32)
    with pytest.raises(ValueError, match=r"texts\[1\] is empty"):
        emofast.extract(model, tok, ["fine", "  "])
    with pytest.raises(TypeError, match=r"texts\[0\] is int"):
        emofast.extract(model, tok, [3])
    with pytest.raises(TypeError, match="single string"):
        emofast.extract(model, tok, "just one")
    with pytest.raises(ValueError, match="layer 9 is out of range"):
        emofast.extract(model, tok, TEXTS, layers=[9])
    with pytest.raises(ValueError, match="position="):
        emofast.extract(model, tok, TEXTS, position="first")
    with pytest.raises(ValueError, match="no chat template"):
        emofast.extract(model, tiny.tokenizer(chat_template=False), TEXTS, chat_template=True)
    with pytest.raises(ValueError, match="labels has 2 entries but texts has 7"):
        emofast.accumulate(model, tok, TEXTS, ["a", "b"])
    with pytest.raises(ValueError, match=r"labels\[0\] is missing"):
        emofast.accumulate(model, tok, TEXTS[:2], [None, "b"])
    with pytest.raises(ValueError, match="not in label_names"):
        emofast.accumulate(model, tok, TEXTS[:2], ["a", "b"], label_names=["a"])


def test_too_long_text_is_refused_or_truncated(tok):
    model = tiny.model("gpt2")  # 256 positions
    long = " ".join(["lazy dog"] * 400)
    with pytest.raises(ValueError, match=r"texts\[1\] is \d+ tokens long, more than the model's context of 256"):
        emofast.extract(model, tok, ["short", long])
    with pytest.warns(UserWarning, match="truncated to the last 256"):
        got = emofast.extract(model, tok, ["short", long], truncate=True)
    ids = tok(long).input_ids[-256:]
    with torch.no_grad():
        ref = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
    assert torch.allclose(got[1], torch.stack([h[0, -1] for h in ref]), atol=1e-5)


def test_non_finite_activations_name_the_layer(tok):
    model = tiny.model("llama")
    h = model.model.layers[1].register_forward_hook(lambda m, a, out: out * float("inf"))
    try:
        with pytest.raises(NonFiniteError, match=r"layer 2 of .*float32.*not an fp16 overflow"):
            emofast.extract(model, tok, TEXTS, layers=[1, 2, 3])
    finally:
        h.remove()


def test_progress_bar_shows_rates(tok, capsys):
    model = tiny.model("llama")
    emofast.extract(model, tok, TEXTS, progress=True, batch_size=2)
    err = capsys.readouterr().err
    assert "text/s" in err and "tok/s" in err


# ------------------------------------------------------------------------------------------- accumulate


def test_accumulate_equals_mean_of_extract_rows(tok):
    model = tiny.model("qwen3")
    labels = ["a", "b", "a", "c", "b", "a", "c"]
    for position in ("last", "mean"):
        rows = emofast.extract(model, tok, TEXTS, position=position, chat_template=True, system_prompt=SYSTEM)
        acc = emofast.accumulate(
            model, tok, TEXTS, labels, position=position, chat_template=True, system_prompt=SYSTEM, batch_size=3
        )
        assert acc.labels == ["a", "b", "c"] and acc.counts.tolist() == [3, 2, 2]
        assert acc.sums.dtype == torch.float64
        for name in "abc":
            idx = [i for i, x in enumerate(labels) if x == name]
            assert torch.allclose(acc.mean(name).float(), rows[idx].mean(0), atol=1e-5)


def test_accumulators_merge_and_serialise(tok, tmp_path):
    model = tiny.model("mistral")
    labels = ["x", "y", "x", "y", "x", "y", "x"]
    whole = emofast.accumulate(model, tok, TEXTS, labels, layers=[0, 2, 3])
    a = emofast.accumulate(model, tok, TEXTS[:3], labels[:3], layers=[0, 2, 3])
    b = emofast.accumulate(model, tok, TEXTS[3:], labels[3:], layers=[0, 2, 3], label_names=["y", "x"])
    merged = a + b
    assert merged.labels == ["x", "y"] and merged.counts.tolist() == whole.counts.tolist()
    assert torch.allclose(merged.sums, whole.sums, atol=1e-9)
    path = tmp_path / "acc.safetensors"
    merged.save(path)
    back = emofast.Accumulator.load(path)
    assert back == merged
    other = emofast.accumulate(model, tok, TEXTS[:2], labels[:2], layers=[0, 2, 3], position="mean")
    with pytest.raises(ValueError, match="meta differs in"):
        merged + other
    with pytest.raises(ValueError, match="different layers"):
        merged + emofast.accumulate(model, tok, TEXTS[:2], labels[:2], layers=[1])


def test_empty_accumulate(tok):
    model = tiny.model("llama")
    acc = emofast.accumulate(model, tok, [], [], label_names=["p", "q"], layers=[1])
    assert acc.counts.tolist() == [0, 0] and acc.sums.shape == (2, 1, 32)


def test_project_matches_extract(tok):
    model = tiny.model("llama")
    torch.manual_seed(0)
    dirs = torch.randn(2, 3, 32)
    proj, norms = emofast.project(model, tok, TEXTS, dirs, layers=[1, 3], position="mean", chat_template=True)
    rows = emofast.extract(model, tok, TEXTS, layers=[1, 3], position="mean", chat_template=True)
    assert torch.allclose(proj, torch.einsum("nld,lkd->nlk", rows, dirs), atol=1e-4)
    assert torch.allclose(norms, rows.norm(dim=-1), atol=1e-4)


# ------------------------------------------------------------------------------------------- imports


def test_import_is_light():
    code = (
        "import sys, emofast; emofast.__version__; "
        "bad = [m for m in ('triton', 'vllm', 'emofast._C', 'transformers') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    code2 = (
        "import sys, emofast, emofast.capture.api, emofast.kernels; "
        "bad = [m for m in ('triton', 'vllm', 'emofast._C') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code2], check=True)


def test_device_map_auto_loads_and_extracts(tok, tmp_path):
    """``device_map="auto"`` (accelerate's placement; on this CPU-only machine everything lands on the CPU) goes
    through the same engine: inputs follow the embedding's device, hooks reduce where each block runs."""
    model = tiny.model("qwen2")
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    mapped, tok2 = emofast.load_model(str(tmp_path / "m"), device_map="auto")
    got = emofast.extract(mapped, tok2, TEXTS, chat_template=True, system_prompt=SYSTEM)
    ref = emofast.extract(model, tok, TEXTS, chat_template=True, system_prompt=SYSTEM)
    assert (got - ref).abs().max() <= 1e-6


@pytest.mark.parametrize("kernel", ["torch", "cpp", "triton"])
def test_every_kernel_gives_the_same_numbers_end_to_end(tok, monkeypatch, kernel):
    """extract and accumulate with each kernel forced (Triton runs through its CPU interpreter here)."""
    model = tiny.model("llama")
    labels = ["a", "b", "a", "b", "a", "b", "a"]
    monkeypatch.delenv("EMOFAST_KERNEL", raising=False)
    ref_rows = emofast.extract(model, tok, TEXTS, position="mean", chat_template=True, system_prompt=SYSTEM)
    ref_acc = emofast.accumulate(model, tok, TEXTS, labels, chat_template=True, system_prompt=SYSTEM)
    monkeypatch.setenv("EMOFAST_KERNEL", kernel)
    assert emofast.kernels.choose(torch.zeros(1, 1, 32), 8, 0) == kernel
    rows = emofast.extract(model, tok, TEXTS, position="mean", chat_template=True, system_prompt=SYSTEM)
    acc = emofast.accumulate(model, tok, TEXTS, labels, chat_template=True, system_prompt=SYSTEM)
    assert (rows - ref_rows).abs().max() <= 1e-5
    assert torch.allclose(acc.sums, ref_acc.sums, atol=1e-5) and torch.equal(acc.counts, ref_acc.counts)


def test_reducers_survive_pickling_mid_pass():
    """The vLLM backend pickles a started reducer to its workers and back: per-batch buffers are rebuilt."""
    import pickle

    import numpy as np

    from emofast.capture.plan import Batch, row_plan
    from emofast.capture.reducers import ClassSumReducer, ProjectionReducer, RowsReducer

    torch.manual_seed(0)
    hidden = torch.randn(3, 5, 8)
    lengths, pad = np.array([5, 3, 4]), np.array([0, 2, 1])
    dirs = torch.randn(2, 4, 8)
    for position in ("last", "mean"):
        batch = Batch(
            index=np.array([2, 0, 1]), lengths=lengths, rows=row_plan([2, 0, 1], lengths, pad, 0, position, "cpu")
        )
        want = torch.stack([hidden[i, pad[i] :].mean(0) if position == "mean" else hidden[i, -1] for i in range(3)])
        reducers = [RowsReducer(), ProjectionReducer(dirs), ClassSumReducer(np.array([0, 1, 1]), 2)]
        for r in reducers:
            r.start(3, [1, 4])
            r = pickle.loads(pickle.dumps(r))  # to the worker
            r.begin(batch)
            r.layer(0, batch, {"live": hidden})
            r.layer(1, batch, {"live": 2 * hidden})
            assert r.end(batch) == []
            r = pickle.loads(pickle.dumps(r))  # and back
            if isinstance(r, RowsReducer):
                assert torch.allclose(r.out[[2, 0, 1], 0], want, atol=1e-6)
                assert torch.allclose(r.out[[2, 0, 1], 1], 2 * want, atol=1e-6)
            elif isinstance(r, ProjectionReducer):
                assert torch.allclose(r.proj[[2, 0, 1], 0], want @ dirs[0].T, atol=1e-5)
                assert torch.allclose(r.norms[[2, 0, 1], 1], (2 * want).norm(dim=1), atol=1e-5)
            else:  # texts 2, 0, 1 carry labels 1, 0, 1
                assert torch.allclose(r.sums[0, 0].float(), want[1], atol=1e-6)
                assert torch.allclose(r.sums[1, 1].float(), 2 * (want[0] + want[2]), atol=1e-5)
