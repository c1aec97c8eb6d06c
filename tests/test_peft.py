"""llmscratch.peft: LoRA on GPT and BERT (formula, merge/unmerge, bf16 merge error, adapters + head saved and
reloaded bit-identically, clear errors), LoRA on the token embedding (peft's Embedding layer), and the peft
folder format both ways against ``peft`` 0.21 on ``transformers`` GPT-2 and BERT (random small models saved by
the tests, offline)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from llmscratch.models.bert import BertConfig, BertForSequenceClassification
from llmscratch.models.gpt import GPTConfig, GPTModel
from llmscratch.peft import (LoRAEmbedding, LoRALinear, apply_lora, export_peft_adapter, import_peft_adapter, lora_layers,
                             lora_state_dict, load_lora, merge_lora, save_lora, trainable_parameters, unmerge_lora)

TINY = dict(vocab_size=97, context_length=32, d_model=32, n_heads=4, n_layers=2)


def gpt(seed: int = 0, **overrides) -> GPTModel:
    torch.manual_seed(seed)
    return GPTModel(GPTConfig(**{**TINY, **overrides})).eval()


def randomise_lora(model: nn.Module, seed: int = 1, std: float = 0.1) -> None:
    """Give the zero-initialised factor non-zero values (as training would), so the update is not trivially zero:
    B of a Linear adapter, A of an embedding adapter (whose B starts standard normal)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in lora_layers(model).values():
            p = m.lora_embedding_A if isinstance(m, LoRAEmbedding) else m.lora_B
            p.copy_(std * torch.randn(p.shape, generator=g))


def ids(seed: int = 2, b: int = 3, t: int = 11, vocab: int = 97) -> torch.Tensor:
    return torch.randint(0, vocab, (b, t), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------- LoRA layer and apply_lora
def test_lora_linear_matches_formula_and_starts_at_identity():
    torch.manual_seed(0)
    base = nn.Linear(16, 24)
    x = torch.randn(5, 16)
    y0 = base(x)
    layer = LoRALinear(base, r=4, alpha=8)
    assert torch.equal(layer(x), y0)  # B = 0: the untrained adapter changes nothing, exactly
    with torch.no_grad():
        layer.lora_B.normal_()
    expected = x @ base.weight.T + base.bias + (8 / 4) * x @ layer.lora_A.T @ layer.lora_B.T
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
    assert layer.weight is base.weight and not layer.weight.requires_grad
    rs = LoRALinear(nn.Linear(16, 24), r=4, alpha=8, use_rslora=True)
    assert rs.scaling == pytest.approx(8 / math.sqrt(4)) and layer.scaling == 2.0


def test_apply_lora_gpt_freezes_base_and_keeps_names():
    model = gpt()
    names_before = set(dict(model.named_parameters()))
    x = ids()
    ref = model(x)
    apply_lora(model, r=4, alpha=8, target_modules=["attn.qkv", "attn.proj"])
    assert set(lora_layers(model)) == {f"blocks.{i}.attn.{m}" for i in range(2) for m in ("qkv", "proj")}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.lora_{ab}" for n in lora_layers(model) for ab in "AB"}
    assert names_before <= set(dict(model.named_parameters()))  # base names unchanged
    assert torch.equal(model(x), ref)
    rep = trainable_parameters(model)
    d, r = 32, 4
    expected = 2 * (r * d + 3 * d * r + r * d + d * r)  # per layer: qkv (A: r x d, B: 3d x r) and proj
    assert rep.trainable == expected and rep.optimizer_bytes == 8 * expected
    assert rep.total == model.num_parameters() and 0 < rep.share < 0.2 and "%" in str(rep)


def test_lora_trains_only_adapters():
    model = gpt()
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    apply_lora(model, r=2, alpha=4, target_modules=["qkv"])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x = ids()
    model.loss(x, x.roll(-1, 1)).backward()
    opt.step()
    for n, p in model.named_parameters():
        if ".lora_" not in n:
            assert torch.equal(p, base[n]), n
    assert all(m.lora_B.abs().sum() > 0 for m in lora_layers(model).values())


def test_apply_lora_bert_and_rslora_scaling():
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=20, num_labels=3)
    model = BertForSequenceClassification(cfg).eval()
    apply_lora(model, r=4, alpha=16, target_modules=["attn.sublayer.qkv", "ff.sublayer.fc"], use_rslora=True,
               modules_to_save=["classifier"])
    assert len(lora_layers(model)) == 4
    assert all(m.scaling == 8.0 for m in lora_layers(model).values())
    assert model.classifier.weight.requires_grad and not model.bert.pooler.weight.requires_grad


# ---------------------------------------------------------------------- LoRA on the token embedding
def test_lora_embedding_matches_formula_and_starts_at_identity():
    torch.manual_seed(0)
    base = nn.Embedding(20, 8, padding_idx=0)
    x = torch.tensor([[0, 3, 19, 3], [7, 1, 2, 0]])
    y0 = base(x)
    layer = LoRAEmbedding(base, r=4, alpha=8)
    # peft's init, the reverse of a Linear's: A (r, num_embeddings) zero, B (dim, r) standard normal
    assert layer.lora_embedding_A.shape == (4, 20) and not layer.lora_embedding_A.any()
    assert layer.lora_embedding_B.shape == (8, 4) and 0.5 < layer.lora_embedding_B.std() < 1.5
    assert torch.equal(layer(x), y0)
    with torch.no_grad():
        layer.lora_embedding_A.normal_()
    table = base.weight + 2.0 * (layer.lora_embedding_B @ layer.lora_embedding_A).T  # (20, 8)
    torch.testing.assert_close(layer(x), table[x], atol=1e-5, rtol=1e-5)
    assert layer.weight is base.weight and not layer.weight.requires_grad and layer.padding_idx == 0
    assert isinstance(layer, nn.Embedding) and "r=4" in repr(layer)


def test_lora_on_tok_emb_trains_merges_and_saves(tmp_path):
    model = gpt(tie_weights=False)  # untied: merging then changes the input table only (see the peft test)
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = ids()
    ref = model(x)
    apply_lora(model, r=4, alpha=8, target_modules=["tok_emb", "attn.qkv"])
    assert isinstance(model.tok_emb, LoRAEmbedding) and torch.equal(model(x), ref)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"tok_emb.lora_embedding_A", "tok_emb.lora_embedding_B"} | {
        f"blocks.{i}.attn.qkv.lora_{ab}" for i in range(2) for ab in "AB"}
    v, d, r = 97, 32, 4
    assert trainable_parameters(model).trainable == r * (v + d) + 2 * (r * d + 3 * d * r)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.loss(x, x.roll(-1, 1)).backward()
    opt.step()
    assert model.tok_emb.lora_embedding_A[:, x.unique()].abs().sum() > 0  # the ids seen got coefficients
    unmerged = model(x)
    assert (unmerged - ref).abs().max() > 1e-3
    merge_lora(model)
    torch.testing.assert_close(model(x), unmerged, atol=1e-5, rtol=0)
    assert not torch.equal(model.tok_emb.weight, w0["tok_emb.weight"])
    unmerge_lora(model)
    for n, p in model.named_parameters():
        if n in w0:
            torch.testing.assert_close(p, w0[n], atol=1e-6, rtol=0)
    state = lora_state_dict(model)
    assert {"tok_emb.lora_embedding_A", "tok_emb.lora_embedding_B"} <= set(state)
    save_lora(model, tmp_path / "emb.safetensors")
    fresh = gpt(tie_weights=False)
    load_lora(fresh, tmp_path / "emb.safetensors")
    assert isinstance(fresh.tok_emb, LoRAEmbedding) and torch.equal(fresh(x), unmerged)


# ---------------------------------------------------------------------- merge / unmerge
def test_merge_equals_unmerged_and_unmerge_restores():
    model = gpt()
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    apply_lora(model, r=4, alpha=8, target_modules=["attn.qkv", "attn.proj", "ff.fc", "ff.proj"])
    randomise_lora(model)
    x = ids()
    unmerged = model(x)
    merge_lora(model)
    assert all(m.merged for m in lora_layers(model).values())
    torch.testing.assert_close(model(x), unmerged, atol=1e-5, rtol=0)
    assert not torch.equal(model.blocks[0].attn.qkv.weight, w0["blocks.0.attn.qkv.weight"])
    with pytest.raises(RuntimeError, match="already merged"):
        merge_lora(model)
    unmerge_lora(model)
    for n, p in model.named_parameters():
        if n in w0:
            torch.testing.assert_close(p, w0[n], atol=1e-6, rtol=0)
    with pytest.raises(RuntimeError, match="not merged"):
        unmerge_lora(model)
    torch.testing.assert_close(model(x), unmerged, atol=1e-6, rtol=0)


def test_bf16_merge_error_is_measured_and_small():
    """Merging rounds W + scaling*BA to bf16 (8 bits of mantissa): the merged output differs from the unmerged
    one by about bf16's resolution, not exactly 0 and not more (measured relative to the logits' scale)."""
    model = gpt()
    apply_lora(model, r=4, alpha=8, target_modules=["attn.qkv", "attn.proj"])
    randomise_lora(model, std=0.01)
    model = model.to(torch.bfloat16)
    x = ids()
    unmerged = model(x).float()
    merge_lora(model)
    merged = model(x).float()
    rel = ((merged - unmerged).abs().max() / unmerged.abs().max()).item()
    assert 0 < rel < 0.05, rel


# ---------------------------------------------------------------------- adapters saved and reloaded with a head
def test_adapters_with_new_head_reload_bit_identical(tmp_path):
    base_state = gpt(seed=0).state_dict()

    def with_head(head_seed):
        model = gpt(seed=0)
        model.load_state_dict(base_state)
        torch.manual_seed(head_seed)
        model.lm_head = nn.Linear(32, 2)  # a new 2-class head replaces the (tied) LM head
        return model

    model = with_head(10)
    apply_lora(model, r=4, alpha=8, target_modules=["attn.qkv", "attn.proj"], modules_to_save=["lm_head"])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x, y = ids(), torch.tensor([0, 1, 1])
    nn.functional.cross_entropy(model(x)[:, -1], y).backward()
    opt.step()
    assert "lm_head.weight" in lora_state_dict(model)
    size = save_lora(model, tmp_path / "adapter.safetensors")
    assert size == (tmp_path / "adapter.safetensors").stat().st_size and size < 16 * 1024
    expected = model(x)

    fresh = with_head(99)  # a different random head: it must be overwritten by the saved one
    assert not torch.equal(fresh.lm_head.weight, model.lm_head.weight)
    load_lora(fresh, tmp_path / "adapter.safetensors")
    assert torch.equal(fresh.eval()(x), expected)


def test_load_adapter_onto_another_shape_is_a_clear_error(tmp_path):
    model = apply_lora(gpt(), r=4, alpha=8, target_modules=["attn.qkv"])
    save_lora(model, tmp_path / "a.safetensors")
    other = gpt(d_model=48)
    with pytest.raises(ValueError, match="another shape"):
        load_lora(other, tmp_path / "a.safetensors")
    deeper = gpt(n_layers=3)
    with pytest.raises(ValueError, match="lacks adapters"):
        load_lora(deeper, tmp_path / "a.safetensors")


def test_clear_errors():
    with pytest.raises(ValueError, match=r"matches no nn.Linear or nn.Embedding.*attn.qkv, attn.proj, ff.fc, "
                                         r"ff.proj, lm_head; its Embedding layers: tok_emb, pos_emb"):
        apply_lora(gpt(), r=4, alpha=8, target_modules=["q_proj"])
    with pytest.raises(ValueError, match=r"'wte' matches no .*Embedding layers: tok_emb, pos_emb"):
        apply_lora(gpt(), r=4, alpha=8, target_modules=["wte"])  # peft's name for GPT-2's; ours is tok_emb
    for r in (0, -2, 2.5):
        with pytest.raises(ValueError, match="positive int"):
            apply_lora(gpt(), r=r, alpha=8)
    model = apply_lora(gpt(), r=2, alpha=2)
    with pytest.raises(ValueError, match="already has a LoRA adapter"):
        apply_lora(model, r=2, alpha=2)
    with pytest.raises(ValueError, match="no LoRA layers"):
        merge_lora(gpt())


# ---------------------------------------------------------------------- the peft folder format, both ways
# Imported per test, so that the LoRA tests above still run where peft is not installed.
def hf_libs():
    return pytest.importorskip("transformers"), pytest.importorskip("peft")

HF_GPT2 = dict(vocab_size=97, n_positions=32, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0,
               attn_pdrop=0.0)
GPT2_TARGETS = {"attn.qkv": "attn.c_attn", "attn.proj": "attn.c_proj", "ff.fc": "mlp.c_fc", "ff.proj": "mlp.c_proj"}


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    """A random small transformers GPT-2, biases and LayerNorms randomised too, saved as a Hugging Face folder."""
    transformers, _ = hf_libs()
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**HF_GPT2, initializer_range=0.2))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.2 * torch.randn_like(p))
    folder = tmp_path_factory.mktemp("gpt2")
    model.save_pretrained(folder)
    return folder


def hf_gpt2(folder):
    transformers, _ = hf_libs()
    return transformers.GPT2LMHeadModel.from_pretrained(folder).eval()


@pytest.mark.parametrize("use_rslora", [False, True])
def test_export_gpt2_adapter_loads_in_peft_with_equal_logits(gpt2_folder, tmp_path, use_rslora):
    _, peft = hf_libs()
    ours = GPTModel.from_pretrained(gpt2_folder).eval()
    apply_lora(ours, r=4, alpha=6, target_modules=list(GPT2_TARGETS), use_rslora=use_rslora)
    randomise_lora(ours, std=0.2)
    x = ids()
    folder = export_peft_adapter(ours, tmp_path / "adapter")
    theirs = peft.PeftModel.from_pretrained(hf_gpt2(gpt2_folder), folder).eval()
    assert theirs.peft_config["default"].fan_in_fan_out
    with torch.no_grad():
        expected = theirs(x).logits
        base = hf_gpt2(gpt2_folder)(x).logits
        got = ours(x)
    assert (expected - base).abs().max() > 1e-2  # the adapter really changes the output
    diff = (got - expected).abs().max().item()
    assert diff <= 1e-5, diff


@pytest.mark.parametrize("targets", [["c_attn"], ["c_attn", "c_proj", "c_fc"]])
def test_import_peft_gpt2_adapter_gives_equal_logits(gpt2_folder, tmp_path, targets):
    _, peft = hf_libs()
    torch.manual_seed(3)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, fan_in_fan_out=True, lora_dropout=0.0)
    theirs = peft.get_peft_model(hf_gpt2(gpt2_folder), config).eval()
    with torch.no_grad():
        for n, p in theirs.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    theirs.save_pretrained(tmp_path / "adapter")
    x = ids()
    with torch.no_grad():
        expected = theirs(x).logits
    ours = import_peft_adapter(GPTModel.from_pretrained(gpt2_folder).eval(), tmp_path / "adapter")
    n_expected = 2 * (1 if targets == ["c_attn"] else 4)  # "c_proj" matches attn.c_proj and mlp.c_proj
    assert len(lora_layers(ours)) == n_expected
    diff = (ours(x) - expected).abs().max().item()
    assert diff <= 1e-5, diff
    # and back out again: our export of the imported adapter loads in peft with the same logits
    back = peft.PeftModel.from_pretrained(hf_gpt2(gpt2_folder), export_peft_adapter(ours, tmp_path / "b")).eval()
    with torch.no_grad():
        assert (back(x).logits - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize("padded", [None, 128])  # 128: our table has 31 rows more than GPT-2's 97
def test_lora_on_wte_equals_peft_both_ways(gpt2_folder, tmp_path, padded):
    """peft's LoRA Embedding layer on wte (with c_attn) given the same A/B: the same logits, unmerged and
    merged (GPT-2 ties wte to the LM head, so merging changes both, in both libraries); and both directions of
    the adapter format (peft's lora_embedding_A/B names)."""
    _, peft = hf_libs()
    torch.manual_seed(3)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["wte", "c_attn"], fan_in_fan_out=True)
    theirs = peft.get_peft_model(hf_gpt2(gpt2_folder), config).eval()
    assert type(theirs.base_model.model.transformer.wte).__name__ == "Embedding"
    with torch.no_grad():
        for n, p in theirs.named_parameters():
            if "lora_B" in n or "lora_embedding_A" in n:
                p.normal_(0, 0.2)
    theirs.save_pretrained(tmp_path / "adapter")
    x = ids()
    with torch.no_grad():
        expected = theirs(x).logits
        base = hf_gpt2(gpt2_folder)(x).logits
    assert (expected - base).abs().max() > 1e-2
    ours = GPTModel.from_pretrained(gpt2_folder, padded_vocab_size=padded).eval()
    import_peft_adapter(ours, tmp_path / "adapter")
    assert isinstance(ours.tok_emb, LoRAEmbedding) and len(lora_layers(ours)) == 3
    diff = (ours(x) - expected).abs().max().item()
    assert diff <= 1e-5, diff
    # and back: our export loads in peft with the same logits (A cut to the real vocabulary)
    back = peft.PeftModel.from_pretrained(hf_gpt2(gpt2_folder), export_peft_adapter(ours, tmp_path / "b")).eval()
    with torch.no_grad():
        assert (back(x).logits - expected).abs().max().item() <= 1e-5
        theirs.merge_adapter()
        merged_theirs = theirs(x).logits
    merge_lora(ours)
    assert (ours(x) - merged_theirs).abs().max().item() <= 1e-5


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    """A random small transformers BertForSequenceClassification (3 labels) saved as a Hugging Face folder."""
    transformers, _ = hf_libs()
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=32, num_labels=3,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=0.2)
    folder = tmp_path_factory.mktemp("bert")
    transformers.BertForSequenceClassification(cfg).save_pretrained(folder)
    return folder


def hf_bert(folder):
    transformers, _ = hf_libs()
    return transformers.BertForSequenceClassification.from_pretrained(folder).eval()


def test_bert_adapter_both_ways(bert_folder, tmp_path):
    """Our fused qkv adapter exports as three peft adapters (query/key/value: shared A, rows of B); peft's three
    import as one of rank 3r (stacked A, block-diagonal B). Logits equal both ways."""
    _, peft = hf_libs()
    x = ids()
    mask = torch.ones_like(x)
    mask[1, 6:] = 0
    ours = BertForSequenceClassification.from_pretrained(bert_folder).eval()
    apply_lora(ours, r=4, alpha=8, target_modules=["attn.sublayer.qkv", "ff.sublayer.fc"])
    randomise_lora(ours, std=0.3)
    theirs = peft.PeftModel.from_pretrained(hf_bert(bert_folder), export_peft_adapter(ours, tmp_path / "a")).eval()
    with torch.no_grad():
        expected = theirs(input_ids=x, attention_mask=mask).logits
        base = hf_bert(bert_folder)(input_ids=x, attention_mask=mask).logits
        got = ours(x, mask)
    assert (expected - base).abs().max() > 1e-2
    assert (got - expected).abs().max().item() <= 1e-5

    torch.manual_seed(4)
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["query", "key", "value", "output.dense"])
    theirs = peft.get_peft_model(hf_bert(bert_folder), config).eval()
    with torch.no_grad():
        for n, p in theirs.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3)
    theirs.save_pretrained(tmp_path / "b")
    with torch.no_grad():
        expected = theirs(input_ids=x, attention_mask=mask).logits
    ours = import_peft_adapter(BertForSequenceClassification.from_pretrained(bert_folder).eval(), tmp_path / "b")
    assert lora_layers(ours)["bert.layers.0.attn.sublayer.qkv"].r == 6  # three rank-2 adapters side by side
    with torch.no_grad():
        assert (ours(x, mask) - expected).abs().max().item() <= 1e-5


# ---------------------------------------------------------------------- bottleneck adapters, prefix tuning
def test_untrained_adapters_leave_output_exactly_unchanged():
    from llmscratch.peft import BottleneckAdapter, apply_adapters

    model = gpt()
    x = ids()
    ref = model(x)
    apply_adapters(model, bottleneck=8)
    adapters = [m for m in model.modules() if isinstance(m, BottleneckAdapter)]
    assert len(adapters) == 4  # after attention and after the feed-forward, in each of 2 blocks
    assert torch.equal(model(x), ref)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(".adapter." in n or "norm" in n for n in trainable) and any(".adapter." in n for n in trainable)
    with torch.no_grad():
        model.blocks[0].ff.adapter.up.weight.normal_()
    assert (model(x) - ref).abs().max() > 1e-3
    # the adapter sits on the sub-layer's output, before the residual addition (Houlsby et al., 2019)
    block, h = model.blocks[1], torch.randn(2, 5, 32)
    with torch.no_grad():
        block.attn.adapter.up.weight.normal_()
        a = block.attn(block.norm1(h))
        no_hook = type(block.attn).forward(block.attn, block.norm1(h))  # the attention output alone
        torch.testing.assert_close(a, block.attn.adapter(no_hook))

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=20, num_labels=3)
    bert = BertForSequenceClassification(cfg).eval()
    xb = ids(vocab=50)
    ref = bert(xb)
    apply_adapters(bert, 4, ["attn.sublayer", "ff.sublayer"], modules_to_save=["classifier"])
    assert torch.equal(bert(xb), ref) and bert.classifier.weight.requires_grad
    with pytest.raises(ValueError, match="matches no module"):
        apply_adapters(gpt(), 4, ["mlp"])


def test_prefix_tuning_equals_peft(gpt2_folder):
    """Our prefixes go through the attention's KV cache; peft's through GPT-2's past_key_values. Same virtual-token
    parameters (copied from peft's PrefixTuningConfig embedding) -> the same logits."""
    from llmscratch.peft import PrefixTuning

    _, peft = hf_libs()
    torch.manual_seed(5)
    config = peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5)
    theirs = peft.get_peft_model(hf_gpt2(gpt2_folder), config).eval()
    emb = theirs.prompt_encoder["default"].embedding.weight
    with torch.no_grad():
        emb.normal_(0, 0.5)
    x = ids(t=9)
    with torch.no_grad():
        expected = theirs(input_ids=x).logits
        base = hf_gpt2(gpt2_folder)(x).logits
    ours = PrefixTuning(GPTModel.from_pretrained(gpt2_folder).eval(), 5).load_peft(emb.detach())
    got = ours(x)
    assert got.shape == expected.shape and (expected - base).abs().max() > 1e-2
    diff = (got - expected).abs().max().item()
    assert diff <= 1e-5, diff
    # only the prefix is trained, and gradients reach it through the cache
    got.sum().backward()
    assert ours.prefix.grad is not None and ours.prefix.grad.abs().sum() > 0
    assert [n for n, p in ours.named_parameters() if p.requires_grad] == ["prefix"]
    with pytest.raises(ValueError, match="num_virtual_tokens"):
        PrefixTuning(GPTModel.from_pretrained(gpt2_folder), 4).load_peft(emb.detach())


def test_prompt_tuning_equals_peft_and_combines_with_lora(gpt2_folder):
    from llmscratch.peft import PromptTuning

    _, peft = hf_libs()
    torch.manual_seed(6)
    config = peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    theirs = peft.get_peft_model(hf_gpt2(gpt2_folder), config).eval()
    emb = theirs.prompt_encoder["default"].embedding.weight
    x = ids(t=9)
    with torch.no_grad():
        emb.normal_(0, 0.5)
        expected = theirs(input_ids=x).logits[:, -9:]
    ours = PromptTuning(GPTModel.from_pretrained(gpt2_folder).eval(), 4)
    with torch.no_grad():
        ours.prompt.copy_(emb)
    diff = (ours(x) - expected).abs().max().item()
    assert diff <= 1e-5, diff
    assert [n for n, p in ours.named_parameters() if p.requires_grad] == ["prompt"]
    # Lester's init: the prompt starts as the embeddings of the given token ids
    init = PromptTuning(GPTModel.from_pretrained(gpt2_folder), 3, init_ids=torch.tensor([5, 6, 7]))
    assert torch.equal(init.prompt, init.model.tok_emb.weight[5:8])
    # prompt + LoRA: both trained, the rest frozen
    both = PromptTuning(apply_lora(GPTModel.from_pretrained(gpt2_folder), 2, 4, target_modules=["attn.qkv"]), 4)
    assert {n.rpartition(".")[2] for n, p in both.named_parameters() if p.requires_grad} == {"prompt", "lora_A",
                                                                                            "lora_B"}


@pytest.mark.parametrize("encoder", ["mlp", "lstm"])
def test_p_tuning_encoder_trains(encoder):
    from llmscratch.peft import PromptTuning

    model = PromptTuning(gpt(), 3, encoder=encoder)
    x = ids()
    out = model(x)
    assert out.shape == (3, 11, 97) and model.virtual_tokens().shape == (3, 32)
    out.sum().backward()
    assert model.prompt.grad.abs().sum() > 0 and all(p.grad is None for p in model.model.parameters())
    with pytest.raises(ValueError, match="context length"):
        model(ids(t=30))


# ---------------------------------------------------------------------- virtual tokens with a padded batch
def padded_batch(t: int = 9, lengths=(9, 5, 7), left: bool = False, pad_id: int = 0):
    """Token ids ``(3, t)`` and their mask: row i has ``lengths[i]`` real tokens, padding after them (or before,
    ``left``), the padded ids set to ``pad_id``."""
    x = ids(t=t)
    mask = torch.zeros_like(x)
    for i, n in enumerate(lengths):
        if left:
            mask[i, t - n:] = 1
        else:
            mask[i, :n] = 1
    return x.masked_fill(mask == 0, pad_id), mask


def peft_prompt_model(folder, config, std: float = 0.5):
    _, peft = hf_libs()
    torch.manual_seed(7)
    theirs = peft.get_peft_model(hf_gpt2(folder), config).eval()
    with torch.no_grad():
        for p in theirs.prompt_encoder["default"].parameters():
            p.normal_(0, std)
    return theirs


def peft_configs(peft):
    return {"prompt": peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
            "prefix": peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
            "p-mlp": peft.PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, encoder_hidden_size=16,
                                              encoder_reparameterization_type="MLP"),
            "p-lstm": peft.PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, encoder_hidden_size=16,
                                               encoder_reparameterization_type="LSTM")}


def ours_like(kind: str, folder, theirs):
    from llmscratch.peft import PrefixTuning, PromptTuning

    base = GPTModel.from_pretrained(folder).eval()
    enc = theirs.prompt_encoder["default"]
    if kind == "prefix":
        return PrefixTuning(base, 4).load_peft(enc.embedding.weight.detach())
    encoder = {"prompt": None, "p-mlp": "mlp", "p-lstm": "lstm"}[kind]
    return PromptTuning(base, 4, encoder=encoder, hidden=16 if encoder else None).load_peft(enc).eval()


@pytest.mark.parametrize("kind", ["prompt", "prefix", "p-mlp", "p-lstm"])
def test_virtual_tokens_with_padded_batch_equal_peft(gpt2_folder, kind):
    """A right-padded batch: the mask is extended by P ones (the virtual tokens are attended to, the padding not),
    as peft does; the logits at the non-padded positions equal peft's on transformers GPT-2. P-tuning's encoders
    are peft's PromptEncoder layer for layer, so its weights map by name and the outputs agree too."""
    _, peft = hf_libs()
    theirs = peft_prompt_model(gpt2_folder, peft_configs(peft)[kind])
    x, mask = padded_batch()
    with torch.no_grad():
        expected = theirs(input_ids=x, attention_mask=mask).logits[:, -x.shape[1]:]
        base = hf_gpt2(gpt2_folder)(x, attention_mask=mask).logits
    ours = ours_like(kind, gpt2_folder, theirs)
    if kind.startswith("p-"):  # the encoder's output is the virtual tokens peft puts in front
        torch.testing.assert_close(ours.virtual_tokens(), theirs.prompt_encoder["default"](
            torch.arange(4).unsqueeze(0))[0], atol=1e-6, rtol=0)
    with torch.no_grad():
        got = ours(x, attention_mask=mask)
    real = mask.bool()
    assert (expected - base)[real].abs().max() > 1e-2  # the virtual tokens really change the output
    diff = (got - expected)[real].abs().max().item()
    assert diff <= 1e-5, diff


@pytest.mark.parametrize("kind", ["prompt", "prefix", "p-lstm"])
def test_left_padding_is_masked_and_positions_skip_it(gpt2_folder, kind):
    """Left padding (as for generation): each sequence's logits in the padded batch equal the sequence run alone,
    so no real token attends to padding and positions count real tokens only; without the mask they differ."""
    _, peft = hf_libs()
    ours = ours_like(kind, gpt2_folder, peft_prompt_model(gpt2_folder, peft_configs(peft)[kind]))
    lengths = (9, 5, 7)
    x, mask = padded_batch(lengths=lengths, left=True, pad_id=3)
    with torch.no_grad():
        got = ours(x, attention_mask=mask)
        unmasked = ours(x)
        for i, n in enumerate(lengths):
            alone = ours(x[i:i + 1, -n:])[0]
            assert (got[i, -n:] - alone).abs().max().item() <= 1e-5
            if n < x.shape[1]:
                assert (unmasked[i, -n:] - alone).abs().max().item() > 1e-3


def test_virtual_token_errors_are_clear(gpt2_folder):
    from llmscratch.peft import PrefixTuning, PromptTuning

    _, peft = hf_libs()
    x, mask = padded_batch()
    for model in (PromptTuning(gpt(), 3), PrefixTuning(gpt(), 3)):
        with pytest.raises(ValueError, match=r"real tokens only.*3 virtual tokens"):
            model(x, attention_mask=torch.ones(3, 12, dtype=torch.long))  # a mask that already has the 3
        with pytest.raises(ValueError, match="0 .padding. and 1"):
            model(x, attention_mask=x)  # token ids passed as the mask
        with pytest.raises(ValueError, match="crop the input to 29"):
            model(ids(t=30))
        with pytest.raises(ValueError, match=r"shape \(batch, seq\)"):
            model(x[0])
    with pytest.raises(ValueError, match="positive int"):
        PromptTuning(gpt(), 0)
    with pytest.raises(ValueError, match="'mlp' or 'lstm'"):
        PromptTuning(gpt(), 3, encoder="gru")
    with pytest.raises(ValueError, match="no encoder"):
        PromptTuning(gpt(), 3, hidden=16)
    theirs = peft_prompt_model(gpt2_folder, peft_configs(peft)["p-mlp"])
    with pytest.raises(ValueError, match="same encoder type"):
        PromptTuning(GPTModel.from_pretrained(gpt2_folder), 4, encoder="lstm", hidden=16).load_peft(
            theirs.prompt_encoder["default"])
    with pytest.raises(ValueError, match="encoder_hidden_size"):
        PromptTuning(GPTModel.from_pretrained(gpt2_folder), 4, encoder="mlp", hidden=8).load_peft(
            theirs.prompt_encoder["default"])
