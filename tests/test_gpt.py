"""GPTModel against independent references: transformers' GPT2LMHeadModel (random small weights, offline), the
parameter-count formula, and its own full-sequence forward pass (cache, padding)."""

from __future__ import annotations

import json

import pytest
import torch
from torch.nn import functional as F

from llmscratch.models.gpt import PRESETS, GPTConfig, GPTModel

transformers = pytest.importorskip("transformers")
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

SMALL = dict(vocab_size=320, n_positions=48, n_embd=48, n_head=4, n_layer=3)


def hf_model(seed=0, **kw) -> GPT2LMHeadModel:
    """A randomly initialised small GPT-2 from transformers (larger init than GPT-2's so outputs vary)."""
    torch.manual_seed(seed)
    cfg = GPT2Config(**{**SMALL, **kw}, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=0.2,
                     bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(cfg).eval()
    # transformers initialises biases and LayerNorms to 0/1; randomise them so the mapping of each is tested.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf_gpt2")
    model = hf_model()
    model.save_pretrained(folder)
    return folder, model


def formula_params(cfg: GPTConfig, tied=True) -> int:
    d, L, V, T = cfg.d_model, cfg.n_layers, cfg.vocab_size, cfg.context_length
    block = (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d) + 2 * (2 * d)
    return V * d + T * d + L * block + 2 * d + (0 if tied else V * d)


def test_gpt2_parameter_count():
    model = GPTModel(GPTConfig.preset("gpt2"))
    assert model.num_parameters() == 124_439_808
    assert model.num_parameters(tied=False) == 124_439_808 + 50257 * 768 == 163_037_184
    assert model.num_parameters(non_embedding=True) == 124_439_808 - 1024 * 768


@pytest.mark.parametrize("name", [n for n in PRESETS if n != "gpt2"])
def test_preset_parameter_counts_match_formula(name):
    cfg = GPTConfig.preset(name)
    with torch.device("meta"):  # no memory: gpt2-xl has 1.5B parameters
        model = GPTModel(cfg)
    assert model.num_parameters() == formula_params(cfg)
    assert model.num_parameters(tied=False) == formula_params(cfg, tied=False)


def test_parameter_count_matches_transformers():
    hf = hf_model()
    ours = GPTModel(GPTConfig(vocab_size=320, context_length=48, d_model=48, n_heads=4, n_layers=3))
    assert ours.num_parameters() == sum(p.numel() for p in hf.parameters())


def test_forward_shape_and_dtype():
    model = GPTModel(GPTConfig.preset("gpt-nano", vocab_size=100))
    logits = model(torch.randint(0, 100, (2, 9)))
    assert logits.shape == (2, 9, 100) and logits.dtype == torch.float32


def test_from_pretrained_logits_equal_transformers(hf_folder):
    folder, hf = hf_folder
    ours = GPTModel.from_pretrained(folder).eval()
    idx = torch.randint(0, SMALL["vocab_size"], (3, SMALL["n_positions"]))
    with torch.no_grad():
        diff = (ours(idx) - hf(idx).logits).abs().max().item()
    assert diff <= 1e-4, f"max abs logit difference {diff}"


def test_right_padding_mask_equals_transformers(hf_folder):
    folder, hf = hf_folder
    ours = GPTModel.from_pretrained(folder).eval()
    idx = torch.randint(0, SMALL["vocab_size"], (2, 12))
    mask = torch.ones_like(idx)
    mask[1, 7:] = 0
    with torch.no_grad():
        a, b = ours(idx, attention_mask=mask), hf(idx, attention_mask=mask).logits
    torch.testing.assert_close(a[0], b[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(a[1, :7], b[1, :7], atol=1e-4, rtol=0)


def test_save_pretrained_round_trip_into_transformers(hf_folder, tmp_path):
    folder, hf = hf_folder
    ours = GPTModel.from_pretrained(folder).eval()
    ours.save_pretrained(tmp_path / "ours")
    back = GPT2LMHeadModel.from_pretrained(tmp_path / "ours").eval()
    again = GPTModel.from_pretrained(tmp_path / "ours").eval()
    idx = torch.randint(0, SMALL["vocab_size"], (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(back(idx).logits, hf(idx).logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(again(idx), ours(idx), atol=0, rtol=0)


def test_untied_and_pytorch_bin_checkpoint(tmp_path):
    hf = hf_model(seed=1, tie_word_embeddings=False)
    # The older checkpoint format: a pickled state dict (what OpenAI's GPT-2 on the Hub also ships).
    hf.config.save_pretrained(tmp_path)
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    ours = GPTModel.from_pretrained(tmp_path).eval()
    assert not ours.cfg.tie_weights
    assert ours.num_parameters() == sum(p.numel() for p in hf.parameters())
    idx = torch.randint(0, SMALL["vocab_size"], (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), hf(idx).logits, atol=1e-4, rtol=0)
    ours.save_pretrained(tmp_path / "out")
    back = GPT2LMHeadModel.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        torch.testing.assert_close(back(idx).logits, hf(idx).logits, atol=1e-5, rtol=0)


def test_padded_vocab_gives_same_logits(hf_folder):
    folder, hf = hf_folder
    ours = GPTModel.from_pretrained(folder, padded_vocab_size=384).eval()
    assert ours.tok_emb.weight.shape[0] == 384 and ours.cfg.pad_to_multiple(64) == 320
    idx = torch.randint(0, SMALL["vocab_size"], (2, 10))
    with torch.no_grad():
        logits = ours(idx)
        assert logits.shape == (2, 10, SMALL["vocab_size"])
        torch.testing.assert_close(logits, hf(idx).logits, atol=1e-4, rtol=0)


def test_shape_mismatch_names_the_tensor(hf_folder, tmp_path):
    folder, _ = hf_folder
    cfg = json.loads((folder / "config.json").read_text())
    cfg["n_positions"] = 64  # the weights have 48 positions
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match=r"wpe\.weight.*pos_emb\.weight"):
        GPTModel.from_pretrained(tmp_path)


def test_missing_folder_and_offline_name(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="config.json"):
        GPTModel.from_pretrained(tmp_path)
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.setenv("LLMSCRATCH_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="offline.*local folder"):
        GPTModel.from_pretrained("gpt2")


def test_unknown_preset_lists_presets():
    with pytest.raises(ValueError, match="gpt2-medium.*gpt-mini"):
        GPTConfig.preset("gpt3")
    with pytest.raises(TypeError, match="n_layer"):
        GPTConfig.preset("gpt2", n_layer=3)
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(d_model=100, n_heads=3)
    with pytest.raises(ValueError, match="50304"):
        GPTConfig(padded_vocab_size=50000)


def test_too_long_input_is_an_error():
    model = GPTModel(GPTConfig.preset("gpt-nano", vocab_size=50, context_length=8))
    with pytest.raises(ValueError, match="context length 8.*crop"):
        model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(batch, seq\)"):
        model(torch.zeros(9, dtype=torch.long))


def test_cache_in_chunks_equals_full_forward():
    torch.manual_seed(0)
    model = GPTModel(GPTConfig.preset("gpt-nano", vocab_size=97, context_length=32)).eval()
    idx = torch.randint(0, 97, (2, 20))
    cache = model.new_cache(2)
    with torch.no_grad():
        full = model(idx)
        parts = [model(idx[:, :7], cache=cache), model(idx[:, 7:8], cache=cache), model(idx[:, 8:], cache=cache)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


def test_left_padding_equals_unpadded():
    torch.manual_seed(0)
    model = GPTModel(GPTConfig.preset("gpt-nano", vocab_size=97, context_length=32)).eval()
    short = torch.randint(1, 97, (1, 6))
    padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), short], dim=1)
    mask = torch.cat([torch.zeros(1, 4), torch.ones(1, 6)], dim=1).long()
    with torch.no_grad():
        torch.testing.assert_close(model(padded, attention_mask=mask)[:, 4:], model(short), atol=1e-5, rtol=1e-5)


def test_weights_are_tied_and_trainable():
    torch.manual_seed(0)
    model = GPTModel(GPTConfig.preset("gpt-nano", vocab_size=61))
    assert model.lm_head.weight is model.tok_emb.weight
    idx = torch.randint(0, 61, (2, 12))
    opt = model.configure_optimizer(lr=1e-2)
    losses = []
    for _ in range(5):
        loss = F.cross_entropy(model(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_init_follows_gpt2():
    torch.manual_seed(0)
    cfg = GPTConfig.preset("gpt-mini")
    model = GPTModel(cfg)
    assert abs(model.blocks[0].attn.qkv.weight.std().item() - 0.02) < 2e-3
    expected = 0.02 / (2 * cfg.n_layers) ** 0.5
    assert abs(model.blocks[0].ff.proj.weight.std().item() - expected) < 1e-3


def test_estimate_mfu_formula():
    model = GPTModel(GPTConfig.preset("gpt-nano", vocab_size=100))
    n = model.num_parameters() - model.pos_emb.weight.numel()
    cfg = model.cfg
    per_token = 6 * n + 12 * cfg.n_layers * cfg.d_model * cfg.context_length
    assert model.estimate_mfu(1000, 0.5, peak_flops=1e12) == pytest.approx(per_token * 1000 / 0.5 / 1e12)
    with pytest.raises(ValueError):
        model.estimate_mfu(1000, 0.0, peak_flops=1e12)


def test_forward_compiles_without_graph_breaks():
    import torch._dynamo

    model = GPTModel(GPTConfig.preset("gpt-nano", vocab_size=64)).eval()
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(torch.randint(0, 64, (2, 16)))
    assert explanation.graph_break_count == 0, explanation.break_reasons


# ---------------------------------------------------------------------- bad inputs: errors that name the fix
def test_token_ids_out_of_range_name_id_vocab_and_cause():
    model = GPTModel(GPTConfig.preset("gpt-nano", vocab_size=64)).eval()
    ok = torch.randint(0, 64, (2, 8))
    with pytest.raises(ValueError, match=r"idx holds token id 64, outside the model's vocabulary \(0 to 63, "
                       r"vocab_size=64\); .*larger vocabulary.*n_vocab"):
        model(torch.cat([ok, torch.full((2, 1), 64)], 1))
    padded = ok.clone()
    padded[0, :3] = -100  # -100 used as input padding
    with pytest.raises(ValueError, match=r"token id -100.*ignore_index of the loss \*targets\*.*attention_mask"):
        model(padded)
    with pytest.raises(ValueError, match=r"token id -1, .*negative ids are never tokens"):
        model.loss(ok.clamp(max=-1), ok)
    with pytest.raises(TypeError, match=r"got torch.float64; .*idx.long\(\)"):
        model(ok.double())
    targets = ok.clone()
    targets[:, :2] = -100  # -100 in the *targets* is the ignore_index: fine
    assert torch.isfinite(model.loss(ok, targets))


def test_attention_masks_must_be_binary_integers_or_bools():
    model = GPTModel(GPTConfig.preset("gpt-nano", vocab_size=64)).eval()
    idx = torch.randint(0, 64, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[0, :2] = 0
    ref = model(idx, attention_mask=mask)
    torch.testing.assert_close(model(idx, attention_mask=mask.bool()), ref, rtol=0, atol=0)
    with pytest.raises(TypeError, match=r"got a torch.float32 tensor.*additive mask.*\(mask > 0.5\).*\(mask == 0\)"):
        model(idx, attention_mask=mask.float())  # a float mask shifted positions silently before
    additive = torch.zeros(2, 6).masked_fill(mask == 0, float("-inf"))
    with pytest.raises(TypeError, match="float"):
        model(idx, attention_mask=additive)
    with pytest.raises(ValueError, match=r"only 0 \(padding\) and 1 \(real token\), found 2.*\(ids != pad_id\)"):
        model(idx, attention_mask=mask * 2)
    with pytest.raises(ValueError, match="found -1"):
        model(idx, attention_mask=mask - 1)


def test_kv_cache_of_another_batch_size():
    model = GPTModel(GPTConfig.preset("gpt-nano", vocab_size=64)).eval()
    cache = model.new_cache(3)
    with pytest.raises(ValueError, match=r"KV cache was made for a batch of 3 but idx has a batch of 2; "
                       r".*model.new_cache\(2\)"):
        model(torch.randint(0, 64, (2, 4)), cache=cache)
    assert cache[0].length == 0, "a rejected call wrote into the cache"


def test_float64_input_to_float32_module():
    from llmscratch.models.attention import MultiHeadAttention

    attn = MultiHeadAttention(16, 16, 2, 8)
    with pytest.raises(TypeError, match=r"x is torch.float64 but this module's weights are torch.float32; "
                       r"convert the input \(x.to\(torch.float32\)\)"):
        attn(torch.randn(1, 4, 16, dtype=torch.float64))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision is not a mismatch
        attn(torch.randn(1, 4, 16, dtype=torch.bfloat16))
    assert attn.double()(torch.randn(1, 4, 16, dtype=torch.float64)).dtype == torch.float64


def test_id_check_keeps_the_compiled_graph_whole():
    import torch._dynamo

    model = GPTModel(GPTConfig.preset("gpt-nano", vocab_size=64)).eval()
    torch._dynamo.reset()
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[0, :3] = 0
    explanation = torch._dynamo.explain(model)(torch.randint(0, 64, (2, 16)), attention_mask=mask)
    assert explanation.graph_break_count == 0, explanation.break_reasons
