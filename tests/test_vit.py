"""The Vision Transformer against independent references: transformers' ViTForImageClassification (random small
models saved by the tests, offline; logits, eager attention maps, interpolated position embeddings), the
unfold + Linear view of the patch embedding, the rollout formula written as a product of matrices, parameter
counts of the published sizes, and the torch-only image augmentations."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.nn import functional as F

from llmscratch.augment_images import ImageBatches, random_affine, random_erasing, random_shift, translate
from llmscratch.models.vit import (
    PRESETS, ViTConfig, ViTForImageClassification, attention_rollout, mean_attention_distance,
    neighbour_similarity_gap, patch_grid_distances, patchify, position_similarity, unpatchify,
)

transformers = pytest.importorskip("transformers")
from transformers import ViTConfig as HFViTConfig  # noqa: E402
from transformers import ViTForImageClassification as HFViT  # noqa: E402

SMALL = dict(image_size=28, patch_size=7, num_channels=1, hidden_size=48, num_attention_heads=4,
             num_hidden_layers=3, intermediate_size=96, num_labels=10)


def hf_model(seed=0, **kw) -> HFViT:
    """A random small transformers ViT; every parameter (biases and LayerNorms too) randomised so that the
    mapping of each one is tested."""
    torch.manual_seed(seed)
    cfg = HFViTConfig(**{**SMALL, **kw}, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = HFViT(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.2 * torch.randn_like(p) + (1.0 if p.dim() == 1 and p.mean() == 1 else 0.0))
    return model


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf_vit")
    hf_model().save_pretrained(folder)
    # eager: the path that returns attention maps (the default sdpa path returns none)
    return folder, HFViT.from_pretrained(folder, attn_implementation="eager").eval()


def images(b=3, c=1, size=28, seed=1):
    return torch.rand(b, c, size, size, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------- against transformers


def test_logits_equal_transformers(hf_folder):
    folder, hf = hf_folder
    ours = ViTForImageClassification.from_pretrained(folder).eval()
    x = images()
    with torch.no_grad():
        want = hf(pixel_values=x).logits
        got = ours(x)
    assert got.shape == (3, 10)
    assert (got - want).abs().max().item() <= 1e-5


def test_attention_maps_equal_transformers_eager(hf_folder):
    folder, hf = hf_folder
    ours = ViTForImageClassification.from_pretrained(folder).eval()
    x = images()
    with torch.no_grad():
        out = hf(pixel_values=x, output_attentions=True)
        logits, maps = ours(x, return_attention=True)
    assert len(maps) == len(out.attentions) == 3
    for got, want in zip(maps, out.attentions):
        assert got.shape == want.shape == (3, 4, 17, 17)
        assert (got - want).abs().max().item() <= 1e-6
    torch.testing.assert_close(logits, out.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(3, 4, 17))


def test_save_pretrained_loads_in_transformers(tmp_path):
    torch.manual_seed(3)
    cfg = ViTConfig(image_size=32, patch_size=8, num_channels=3, d_model=32, n_heads=2, n_layers=2, d_ff=80,
                    num_classes=5)
    ours = ViTForImageClassification(cfg).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ours.save_pretrained(tmp_path)
    hf = HFViT.from_pretrained(tmp_path, attn_implementation="eager").eval()
    x = images(2, 3, 32)
    with torch.no_grad():
        assert (hf(pixel_values=x).logits - ours(x)).abs().max().item() <= 1e-5
    again = ViTForImageClassification.from_pretrained(tmp_path)
    assert again.cfg == cfg
    for (n1, p1), (n2, p2) in zip(ours.state_dict().items(), again.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "vit" and config["hidden_size"] == 32 and len(config["id2label"]) == 5


def test_interpolated_positions_equal_transformers(hf_folder):
    folder, hf = hf_folder
    ours = ViTForImageClassification.from_pretrained(folder).eval()
    x = torch.rand(2, 1, 42, 35, generator=torch.Generator().manual_seed(5))  # a 6x5 patch grid, not 4x4
    with torch.no_grad():
        want = hf(pixel_values=x, interpolate_pos_encoding=True).logits
        got = ours(x, interpolate_pos_encoding=True)
    assert (got - want).abs().max().item() <= 1e-5
    with pytest.raises(ValueError, match="interpolate_pos_encoding=True"):
        ours(x)


def test_loader_rejects_wrong_checkpoints(tmp_path, hf_folder):
    folder, _ = hf_folder
    cfg = json.loads((folder / "config.json").read_text())
    bad = tmp_path / "bert"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({**cfg, "model_type": "bert"}))
    with pytest.raises(ValueError, match="not a ViT"):
        ViTForImageClassification.from_pretrained(bad)
    model = ViTForImageClassification.from_pretrained(folder)
    state = {k: v for k, v in __import__("safetensors.torch", fromlist=["load_file"]).load_file(
        str(folder / "model.safetensors")).items()}
    wrong = dict(state)
    wrong["vit.embeddings.position_embeddings"] = torch.zeros(1, 50, 48)
    with pytest.raises(ValueError, match="shape mismatch"):
        model.load_hf_state_dict(wrong)
    no_head = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    with pytest.raises(KeyError, match="no classification head"):
        model.load_hf_state_dict(no_head)
    with pytest.raises(FileNotFoundError):
        ViTForImageClassification.from_pretrained(tmp_path / "missing" / "folder")


# ---------------------------------------------------------------------- patches and configuration


def test_patch_embedding_is_unfold_plus_linear():
    torch.manual_seed(0)
    model = ViTForImageClassification(ViTConfig(image_size=12, patch_size=4, num_channels=3, d_model=16,
                                                n_heads=2, n_layers=1, d_ff=32, num_classes=3))
    conv = model.vit.embeddings.patch_embed.proj
    x = images(2, 3, 12)
    by_conv = model.vit.embeddings.patch_embed(x)  # (2, 9, 16)
    by_hand = patchify(x, 4) @ conv.weight.flatten(1).T + conv.bias
    torch.testing.assert_close(by_conv, by_hand, atol=1e-6, rtol=1e-5)
    # F.unfold cuts the same patches (as columns), in the same order
    unfolded = F.unfold(x, kernel_size=4, stride=4).transpose(1, 2)  # (2, 9, 3*4*4)
    torch.testing.assert_close(patchify(x, 4), unfolded)
    torch.testing.assert_close(unpatchify(patchify(x, 4), 4, 3, 12, 12), x)


def test_patchify_order_is_row_major():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)  # pixel values = their row-major index
    p = patchify(x, 2)  # 2x2 grid of 2x2 patches
    assert p.shape == (1, 4, 4)
    assert p[0, 0].tolist() == [0, 1, 4, 5]  # top-left patch
    assert p[0, 1].tolist() == [2, 3, 6, 7]  # top-right
    assert p[0, 2].tolist() == [8, 9, 12, 13]  # bottom-left


def formula_params(cfg: ViTConfig) -> int:
    d, f, p, c = cfg.d_model, cfg.d_ff, cfg.patch_size, cfg.num_channels
    block = 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * f + f) + (f * d + d)
    embed = c * p * p * d + d + d + cfg.seq_len * d
    return embed + cfg.n_layers * block + 2 * d + d * cfg.num_classes + cfg.num_classes


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_parameter_counts(name):
    cfg = ViTConfig.preset(name)
    with torch.device("meta"):
        model = ViTForImageClassification(cfg)
    assert model.num_parameters() == formula_params(cfg)
    if name == "vit-base-patch16-224":
        assert model.num_parameters() == 86_567_656  # the published ViT-B/16 ImageNet-1k classifier


def test_config_errors_name_the_fix():
    with pytest.raises(ValueError, match="patch sizes that fit"):
        ViTConfig(image_size=28, patch_size=5)
    with pytest.raises(ValueError, match="divisible by n_heads"):
        ViTConfig(d_model=30, n_heads=4)
    with pytest.raises(TypeError, match="unknown ViTConfig field"):
        ViTConfig.preset("vit-mnist", hidden_size=3)
    with pytest.raises(ValueError, match="choose one of"):
        ViTConfig.preset("vit-huge")


def test_image_input_errors_name_the_fix():
    model = ViTForImageClassification(ViTConfig.preset("vit-mnist"))
    with pytest.raises(TypeError, match=r"images.float\(\) / 255"):
        model(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match="expects 1 channel"):
        model(torch.zeros(2, 3, 28, 28))
    with pytest.raises(ValueError, match=r"unsqueeze\(1\)"):
        model(torch.zeros(2, 28, 28))
    with pytest.raises(ValueError, match="not divisible by the patch size 7"):
        model(torch.zeros(2, 1, 30, 30), interpolate_pos_encoding=True)
    rgb = ViTForImageClassification(ViTConfig(image_size=16, patch_size=8, d_model=16, n_heads=2, n_layers=1,
                                              d_ff=16, num_classes=2))
    with pytest.raises(ValueError, match=r"permute\(0, 3, 1, 2\)"):
        rgb(torch.zeros(2, 16, 16, 3))
    with pytest.raises(ValueError, match=r"expand\(-1, 3, -1, -1\)"):
        rgb(torch.zeros(2, 1, 16, 16))


def test_gradients_and_training_step_reduce_loss():
    torch.manual_seed(0)
    model = ViTForImageClassification(ViTConfig.preset("vit-mnist", n_layers=2, d_model=32, d_ff=64))
    y = torch.arange(16) % 10
    # the class sets the brightness: learnable in a few steps, so the test shows that gradients reach and move
    # every part of the model
    x = 0.1 * torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(1)) + y[:, None, None, None] / 10
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(40):
        loss = F.cross_entropy(model(x), y)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(p.grad is not None for p in model.parameters())
    assert loss.item() < 0.5 * first


# ---------------------------------------------------------------------- analyses


def random_stochastic(layers, b, h, t, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.softmax(3 * torch.randn(b, h, t, t, generator=g, dtype=torch.float64), -1) for _ in range(layers)]


def test_attention_rollout_equals_the_formula():
    maps = random_stochastic(3, 2, 4, 6)
    eye = torch.eye(6, dtype=torch.float64)
    want = []
    for i in range(2):
        mats = []
        for a in maps:
            m = a[i].mean(0) + eye
            mats.append(m / m.sum(-1, keepdim=True))
        want.append(torch.linalg.multi_dot(mats[::-1]))  # A_3 @ A_2 @ A_1
    want = torch.stack(want)
    got = attention_rollout(maps)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got.sum(-1), torch.ones(2, 6, dtype=torch.float64))  # still row-stochastic
    # Abnar & Zuidema's 0.5 * A + 0.5 * I is the same matrix when the rows of A sum to one
    one = attention_rollout(maps[:1])
    torch.testing.assert_close(one, 0.5 * maps[0].mean(1) + 0.5 * eye)
    # identity attention (each token attends to itself) leaves every token where it is
    torch.testing.assert_close(attention_rollout([eye.expand(1, 2, 6, 6)] * 4), eye.expand(1, 6, 6))
    with pytest.raises(ValueError, match="head_fusion"):
        attention_rollout(maps, head_fusion="median")


def test_mean_attention_distance_known_cases():
    g, t = 4, 17
    dist = patch_grid_distances(g, patch_size=7)
    assert dist[0, 1] == 7 and dist[0, 5] == pytest.approx(7 * math.sqrt(2))
    local = torch.zeros(1, 1, t, t)
    local[..., 1:, 1:] = torch.eye(16)  # each patch attends to itself: distance 0
    local[..., 0, 0] = 1
    uniform = torch.full((1, 1, t, t), 1 / t)  # uniform: the mean pairwise distance
    got = mean_attention_distance([local, uniform], patch_size=7)
    assert got.shape == (2, 1)
    assert got[0, 0] == 0
    assert got[1, 0].item() == pytest.approx(dist.mean().item(), rel=1e-6)


def test_position_similarity_neighbours_more_similar_for_a_smooth_embedding():
    model = ViTForImageClassification(ViTConfig.preset("vit-mnist"))
    g, d = model.cfg.grid_size, model.cfg.d_model
    yy, xx = torch.meshgrid(torch.arange(g.__float__()), torch.arange(float(g)), indexing="ij")
    freqs = torch.linspace(0.2, 1.0, d // 4)
    smooth = torch.cat([torch.sin(yy.flatten()[:, None] * freqs), torch.cos(yy.flatten()[:, None] * freqs),
                        torch.sin(xx.flatten()[:, None] * freqs), torch.cos(xx.flatten()[:, None] * freqs)], 1)
    with torch.no_grad():
        model.vit.embeddings.position_embeddings[0, 1:] = smooth
    sim = position_similarity(model)
    assert sim.shape == (g * g, g * g)
    torch.testing.assert_close(sim.diagonal(), torch.ones(g * g))
    near, far = neighbour_similarity_gap(sim)
    assert near > far + 0.2
    with torch.no_grad():  # random (untrained) embeddings: no such structure
        model.vit.embeddings.position_embeddings.normal_()
    near, far = neighbour_similarity_gap(position_similarity(model))
    assert abs(near - far) < 0.1


# ---------------------------------------------------------------------- augmentations


def test_translate_is_an_exact_shift():
    x = images(4, 1, 10)
    dx, dy = torch.tensor([0, 2, -1, 3]), torch.tensor([0, 1, -2, 0])
    got = translate(x, dx, dy)
    for i in range(4):
        want = torch.zeros_like(x[i])
        sx, sy = int(dx[i]), int(dy[i])
        src = x[i][:, max(0, -sy): 10 - max(0, sy), max(0, -sx): 10 - max(0, sx)]
        want[:, max(0, sy): 10 - max(0, -sy), max(0, sx): 10 - max(0, -sx)] = src
        torch.testing.assert_close(got[i], want)


def test_random_shift_and_affine_reproducible_and_bounded():
    x = images(64, 1, 28)
    a = random_shift(x, 2, generator=torch.Generator().manual_seed(0))
    b = random_shift(x, 2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, x)
    torch.testing.assert_close(random_shift(x, 0), x)
    # each output equals the input shifted by some offset in [-2, 2]^2
    for i in range(8):
        shifts = [translate(x[i : i + 1], torch.tensor([dx]), torch.tensor([dy]))
                  for dx in range(-2, 3) for dy in range(-2, 3)]
        assert any(torch.equal(a[i : i + 1], s) for s in shifts)
    same = random_affine(x, degrees=0, translate_frac=0, scale=(1, 1))
    torch.testing.assert_close(same, x, atol=1e-5, rtol=0)
    moved = random_affine(x, generator=torch.Generator().manual_seed(1))
    assert moved.shape == x.shape and not torch.allclose(moved, x)
    # a pure rotation by 90 degrees, checked on one pixel-exact case
    with pytest.raises(ValueError):
        random_affine(x, translate_frac=1.5)


def test_random_erasing_area_and_probability():
    x = torch.ones(400, 1, 20, 20)
    out = random_erasing(x, p=0.5, area=(0.05, 0.2), generator=torch.Generator().manual_seed(0))
    erased = (out == 0).flatten(1).sum(1).float() / 400
    hit = erased > 0
    assert 0.4 < hit.float().mean().item() < 0.6
    # rounding of the sides and clipping keep the area near the requested range
    assert erased[hit].min().item() >= 0.03 and erased[hit].max().item() <= 0.3
    # the erased pixels of an image form one rectangle
    for img in out[hit][:20, 0]:
        rows, cols = (img == 0).any(1).nonzero(), (img == 0).any(0).nonzero()
        assert (img == 0).sum() == len(rows) * len(cols)
    torch.testing.assert_close(random_erasing(x, p=0.0), x)
    with pytest.raises(TypeError, match="float"):
        random_erasing(torch.ones(2, 1, 4, 4, dtype=torch.uint8))


def test_image_batches_cover_every_image_once_per_epoch():
    x = torch.arange(10.0).reshape(10, 1, 1, 1).expand(10, 1, 2, 2).contiguous()
    y = torch.arange(10)
    loader = ImageBatches(x, y, batch_size=4, seed=0)
    assert len(loader) == 3
    seen = torch.cat([b[1] for b in loader])
    assert sorted(seen.tolist()) == list(range(10))
    for xb, yb in loader:
        torch.testing.assert_close(xb[:, 0, 0, 0], yb.float())  # images stay with their labels
    first, second = [b[1].tolist() for b in loader], [b[1].tolist() for b in loader]
    assert first != second  # reshuffled each epoch
    assert len(ImageBatches(x, y, batch_size=4, drop_last=True)) == 2
