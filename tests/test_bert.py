"""BERT against transformers' BertModel / BertForMaskedLM / BertForSequenceClassification (random small models
saved by the tests, offline; both of transformers' attention paths), the parameter-count formula, and the sparse
MLM loss against the dense computation."""

from __future__ import annotations

import json

import pytest
import torch
from torch.nn import functional as F

from llmscratch.models.bert import (BERT_PRESETS, BertConfig, BertForMaskedLM, BertForSequenceClassification,
                                    BertModel)

transformers = pytest.importorskip("transformers")

SMALL = dict(vocab_size=120, hidden_size=48, num_hidden_layers=3, num_attention_heads=4, intermediate_size=96,
             max_position_embeddings=40, type_vocab_size=2)
HF_CLASSES = {"BertModel": "BertModel", "BertForMaskedLM": "BertForMaskedLM",
              "BertForSequenceClassification": "BertForSequenceClassification"}
OURS = {"BertModel": BertModel, "BertForMaskedLM": BertForMaskedLM,
        "BertForSequenceClassification": BertForSequenceClassification}


def hf_model(kind: str, seed: int = 0):
    """A random small transformers BERT of class ``kind``; biases and LayerNorms randomised too, so the mapping of
    every tensor is tested (transformers initialises them to 0/1)."""
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(**SMALL, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                  initializer_range=0.2)
    model = getattr(transformers, HF_CLASSES[kind])(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name:
                p.add_(0.2 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module", params=list(HF_CLASSES))
def pair(request, tmp_path_factory):
    """(kind, our model loaded from the transformers checkpoint, the checkpoint folder)."""
    kind = request.param
    folder = tmp_path_factory.mktemp(kind)
    hf_model(kind).save_pretrained(folder)
    ours = OURS[kind].from_pretrained(folder).eval()
    return kind, ours, folder


def batch(seed: int = 1, b: int = 4, t: int = 17):
    """Ids, a right-padding attention mask (rows of 17, 11, 5 and 1 real tokens) and two segments per row."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, SMALL["vocab_size"], (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    for row, real in enumerate((17, 11, 5, 1)[:b]):
        mask[row, real:] = 0
    types = torch.zeros(b, t, dtype=torch.long)
    types[:, t // 2:] = 1
    return ids, mask, types


def _outputs(kind, out):
    if kind == "BertModel":
        return {"last_hidden_state": out.last_hidden_state, "pooler_output": out.pooler_output}
    return {"logits": out.logits if hasattr(out, "logits") else out}


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_outputs_equal_transformers(pair, attn):
    kind, ours, folder = pair
    ref = getattr(transformers, HF_CLASSES[kind]).from_pretrained(folder, attn_implementation=attn).eval()
    ids, mask, types = batch()
    with torch.no_grad():
        got = ours(ids, attention_mask=mask, token_type_ids=types)
        want = ref(input_ids=ids, attention_mask=mask, token_type_ids=types)
    got = _outputs(kind, got)
    want = {k: getattr(want, k) for k in got}
    real = mask.bool()
    for name in got:
        g, w = got[name], want[name]
        if g.dim() == 3:  # compare real positions only: padding positions' outputs are unused by both
            g, w = g[real], w[real]
        diff = (g - w).abs().max().item()
        assert diff <= 1e-5, f"{kind}.{name} differs from transformers ({attn}) by {diff:.2e}"
        assert w.abs().max() > 0.1  # the comparison is not between two near-zero tensors


def test_padding_positions_equal_too(tmp_path):
    """With right padding, even the (unused) padding positions agree with transformers' eager path."""
    hf_model("BertModel", seed=13).save_pretrained(tmp_path)
    ours = BertModel.from_pretrained(tmp_path).eval()
    ref = transformers.BertModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ids, mask, types = batch()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, mask, types).last_hidden_state,
                                   ref(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state,
                                   atol=1e-5, rtol=0)


def test_attention_maps_equal_transformers_eager(pair):
    kind, ours, folder = pair
    ref = getattr(transformers, HF_CLASSES[kind]).from_pretrained(folder, attn_implementation="eager").eval()
    ids, mask, types = batch(seed=2)
    with torch.no_grad():
        got = ours(ids, attention_mask=mask, token_type_ids=types, output_attentions=True)
        want = ref(input_ids=ids, attention_mask=mask, token_type_ids=types, output_attentions=True)
    got_maps = got.attentions if kind == "BertModel" else got[1]
    assert len(got_maps) == len(want.attentions) == SMALL["num_hidden_layers"]
    for g, w in zip(got_maps, want.attentions):
        assert g.shape == w.shape == (4, SMALL["num_attention_heads"], 17, 17)
        assert (g - w).abs().max().item() <= 1e-5
        # padding keys get exactly zero weight, and every row is a distribution
        assert torch.all(g[~mask.bool()[:, None, None, :].expand_as(g)] == 0)
        torch.testing.assert_close(g.sum(-1), torch.ones_like(g.sum(-1)))
    # the explicit path gives the same outputs as the SDPA path
    with torch.no_grad():
        fast = ours(ids, attention_mask=mask, token_type_ids=types)
    fast_t = fast.last_hidden_state if kind == "BertModel" else fast
    slow_t = got.last_hidden_state if kind == "BertModel" else got[0]
    torch.testing.assert_close(fast_t, slow_t, atol=1e-5, rtol=1e-5)


def test_save_pretrained_loads_in_transformers_and_back(tmp_path):
    torch.manual_seed(3)
    ours = BertForSequenceClassification(BertConfig(**SMALL, num_labels=3, hidden_dropout_prob=0.0,
                                                    attention_probs_dropout_prob=0.0)).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ours.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["BertForSequenceClassification"]
    ref = transformers.BertForSequenceClassification.from_pretrained(tmp_path).eval()
    ids, mask, types = batch(seed=4)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, mask, types),
                                   ref(input_ids=ids, attention_mask=mask, token_type_ids=types).logits,
                                   atol=1e-5, rtol=0)
    again = BertForSequenceClassification.from_pretrained(tmp_path)
    for (n, a), (_, b) in zip(ours.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), n


def test_mlm_checkpoint_loads_into_classifier_with_fresh_head(tmp_path):
    """Fine-tuning starts from an MLM checkpoint: the encoder is copied, the classifier and pooler start fresh."""
    torch.manual_seed(5)
    mlm = BertForMaskedLM(BertConfig(**SMALL))
    mlm.save_pretrained(tmp_path)
    clf = BertForSequenceClassification(BertConfig(**SMALL))
    from safetensors.torch import load_file

    missing = clf.load_hf_state_dict(load_file(str(tmp_path / "model.safetensors")))
    assert sorted(missing) == ["bert.pooler.bias", "bert.pooler.weight", "classifier.bias", "classifier.weight"]
    torch.testing.assert_close(clf.bert.embeddings.word_embeddings.weight, mlm.bert.embeddings.word_embeddings.weight)
    torch.testing.assert_close(clf.bert.layers[2].ff.norm.bias, mlm.bert.layers[2].ff.norm.bias)
    loaded = BertForSequenceClassification.from_pretrained(tmp_path, num_labels=5)
    assert loaded.classifier.out_features == 5


def test_mlm_pretraining_steps_equal_transformers_and_every_trained_tensor_reaches_the_classifier(tmp_path):
    """The pretraining -> fine-tuning path end to end: AdamW steps on our sparse MLM loss follow transformers'
    BertForMaskedLM step for step (same init, same masked batches), and the classifier loaded from the trained
    checkpoint holds every trained encoder tensor (not the initial ones). Chapter 4's pretrained model once
    fine-tuned to chance; this rules out the model, the tied decoder, the optimizer step and the loading."""
    from llmscratch.mlm import mask_tokens

    torch.manual_seed(21)
    cfg = BertConfig(**SMALL, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ours = BertForMaskedLM(cfg)
    init = {n: p.detach().clone() for n, p in ours.named_parameters()}
    ours.save_pretrained(tmp_path / "init")
    hf = transformers.BertForMaskedLM.from_pretrained(tmp_path / "init", attn_implementation="eager")
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=3e-3, weight_decay=0.01)
    opt_hf = torch.optim.AdamW(hf.parameters(), lr=3e-3, weight_decay=0.01)
    g = torch.Generator().manual_seed(22)
    for step in range(8):
        ids = torch.randint(5, SMALL["vocab_size"], (6, 24), generator=g)
        inputs, labels = mask_tokens(ids, mask_token_id=4, vocab_size=SMALL["vocab_size"], special_ids=range(5),
                                     mlm_probability=0.3, generator=g)
        loss_ours = ours.loss(inputs, labels)
        loss_hf = hf(input_ids=inputs, labels=labels).loss
        assert abs(loss_ours.item() - loss_hf.item()) < 1e-4, (step, loss_ours.item(), loss_hf.item())
        for model, loss, opt in ((ours, loss_ours, opt_ours), (hf, loss_hf, opt_hf)):
            opt.zero_grad()
            loss.backward()
            opt.step()
    ours.save_pretrained(tmp_path / "trained")
    with torch.no_grad():  # the trained weights agree too (the tied matrix moved once per step in both)
        torch.testing.assert_close(ours.bert.embeddings.word_embeddings.weight,
                                   hf.bert.embeddings.word_embeddings.weight, atol=1e-4, rtol=1e-3)
    clf = BertForSequenceClassification.from_pretrained(tmp_path / "trained", hidden_dropout_prob=0.1)
    trained = dict(ours.bert.named_parameters())
    for name, p in clf.bert.named_parameters():
        if name.startswith("pooler."):
            continue
        torch.testing.assert_close(p, trained[name], atol=0, rtol=0, msg=lambda m: f"{name}: {m}")
        assert not torch.equal(p, init["bert." + name]), f"{name} was not trained (or not loaded)"
    assert clf.cfg.hidden_dropout_prob == 0.1  # fine-tuning may switch dropout back on


def test_sparse_mlm_loss_equals_dense_with_gradients():
    torch.manual_seed(6)
    model = BertForMaskedLM(BertConfig(**SMALL, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ids, mask, types = batch(seed=7)
    labels = torch.full_like(ids, -100)
    chosen = (torch.rand(ids.shape, generator=torch.Generator().manual_seed(8)) < 0.2) & mask.bool()
    labels[chosen] = torch.randint(0, SMALL["vocab_size"], (int(chosen.sum()),))
    assert 5 < chosen.sum() < ids.numel() // 2

    sparse = model.loss(ids, labels, attention_mask=mask, token_type_ids=types)
    sparse.backward()
    g_sparse = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    logits = model(ids, attention_mask=mask, token_type_ids=types)
    dense = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    dense.backward()
    torch.testing.assert_close(sparse, dense, atol=1e-6, rtol=1e-6)
    for n, p in model.named_parameters():
        torch.testing.assert_close(g_sparse[n], p.grad, atol=1e-6, rtol=1e-5, msg=lambda m: f"{n}: {m}")
    assert g_sparse["head.bias"].abs().sum() > 0


def test_sparse_mlm_loss_equals_transformers_loss(tmp_path):
    hf = hf_model("BertForMaskedLM", seed=9)
    hf.save_pretrained(tmp_path)
    ours = BertForMaskedLM.from_pretrained(tmp_path).eval()
    ids, mask, types = batch(seed=10)
    labels = torch.where(torch.rand(ids.shape) < 0.3, ids, torch.full_like(ids, -100))
    labels[0, 0] = ids[0, 0]  # at least one label
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels).loss
        got = ours.loss(ids, labels, attention_mask=mask, token_type_ids=types)
    assert abs(got.item() - want.item()) <= 1e-5


def test_decoder_is_tied_to_word_embeddings():
    model = BertForMaskedLM(BertConfig(**SMALL))
    with torch.no_grad():
        model.bert.embeddings.word_embeddings.weight[7].zero_()
        model.head.bias.zero_()
        logits = model(torch.tensor([[1, 2, 3]]))
    assert torch.all(logits[..., 7] == 0)  # a zero embedding row is a zero decoder row: one matrix


def formula_params(cfg: BertConfig, pooler: bool = True) -> int:
    h, i, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    emb = (cfg.vocab_size + cfg.max_position_embeddings + cfg.type_vocab_size) * h + 2 * h
    layer = (3 * h * h + 3 * h) + (h * h + h) + 2 * h + (h * i + i) + (i * h + h) + 2 * h
    return emb + L * layer + (h * h + h if pooler else 0)


def test_bert_base_parameter_count():
    with torch.device("meta"):
        model = BertModel(BertConfig.preset("bert-base-uncased"))
    assert model.num_parameters() == 109_482_240  # transformers' BertModel("bert-base-uncased")


@pytest.mark.parametrize("name", list(BERT_PRESETS))
def test_preset_parameter_counts(name):
    cfg = BertConfig.preset(name)
    with torch.device("meta"):
        model = BertModel(cfg)
        ref = transformers.BertModel(transformers.BertConfig(**{k: getattr(cfg, k) for k in SMALL}))
    assert model.num_parameters() == formula_params(cfg) == sum(p.numel() for p in ref.parameters())


def test_dropout_active_only_in_training():
    torch.manual_seed(11)
    model = BertForSequenceClassification(BertConfig(**SMALL, hidden_dropout_prob=0.3))
    ids, mask, types = batch(seed=12)
    model.train()
    a, b = model(ids, mask, types), model(ids, mask, types)
    assert not torch.allclose(a, b)
    model.eval()
    torch.testing.assert_close(model(ids, mask, types), model(ids, mask, types))


def test_bad_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="divisible by num_attention_heads"):
        BertConfig(hidden_size=100, num_attention_heads=3)
    with pytest.raises(ValueError, match="unknown BERT preset"):
        BertConfig.preset("bert-huge")
    with pytest.raises(TypeError, match="unknown BertConfig field"):
        BertConfig.preset("bert-tiny", hiden_size=3)
    model = BertModel(BertConfig(**SMALL))
    with pytest.raises(ValueError, match="longer than max_position_embeddings"):
        model(torch.zeros(1, 41, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(batch, seq\)"):
        model(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask must have the shape"):
        model(torch.zeros(2, 5, dtype=torch.long), attention_mask=torch.ones(2, 4))
    mlm = BertForMaskedLM(BertConfig(**SMALL))
    with pytest.raises(ValueError, match="labels"):
        mlm.loss(torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(FileNotFoundError, match="config.json"):
        BertModel.from_pretrained(tmp_path)
    small = BertModel(BertConfig(**SMALL))
    small.save_pretrained(tmp_path / "a")
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    cfg["hidden_size"] = 64
    (tmp_path / "a" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="shape mismatch"):
        BertModel.from_pretrained(tmp_path / "a")
    cfg["model_type"] = "roberta"
    (tmp_path / "a" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="not BERT"):
        BertModel.from_pretrained(tmp_path / "a")


def test_all_padding_row_gives_no_nan_and_leaves_other_rows_alone():
    torch.manual_seed(14)
    model = BertModel(BertConfig(**SMALL)).eval()
    ids, mask, types = batch(seed=15)
    mask2 = mask.clone()
    mask2[3] = 0  # a row with no real token at all
    with torch.no_grad():
        out = model(ids, mask2, types).last_hidden_state
        ref = model(ids, mask, types).last_hidden_state
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[:3], ref[:3])


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_gradient_checkpointing_gives_the_same_gradients_and_saves_memory(dropout):
    from llmscratch.train import saved_activation_bytes

    ids, mask, types = batch()
    labels = torch.where(torch.rand(ids.shape, generator=torch.Generator().manual_seed(3)) < 0.3, ids, -100)
    grads, saved = [], []
    for recompute in (False, True):
        torch.manual_seed(0)
        model = BertForMaskedLM(BertConfig(**SMALL, hidden_dropout_prob=dropout,
                                           attention_probs_dropout_prob=dropout,
                                           gradient_checkpointing=recompute))
        torch.manual_seed(7)  # the same dropout masks: the recomputation replays the RNG state
        model.loss(ids, labels, attention_mask=mask, token_type_ids=types).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        saved.append(saved_activation_bytes(lambda: model(ids, attention_mask=mask, token_type_ids=types),
                                            exclude=model))
    assert (grads[0] - grads[1]).abs().max() <= 1e-6
    assert saved[1] < saved[0] / 2, f"checkpointing saved {saved[1]} bytes vs {saved[0]} without"
