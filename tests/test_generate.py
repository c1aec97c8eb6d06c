"""Generation against references: transformers' greedy/beam generate and logits warpers on the same random
weights, the uncached loop, unbatched runs, exhaustive search, and the sampling distribution."""

from __future__ import annotations

import itertools

import pytest
import torch

from llmscratch.generate import (beam_search, generate, ids_to_text, sample_next, sequence_log_prob,
                                 text_to_ids, top_k_filter, top_p_filter)
from llmscratch.models.gpt import GPTConfig, GPTModel

transformers = pytest.importorskip("transformers")
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The same random small GPT-2 as transformers' model and as ours."""
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=211, n_positions=64, n_embd=48, n_head=4, n_layer=3,
                                    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=0.2,
                                    bos_token_id=0, eos_token_id=0)).eval()
    folder = tmp_path_factory.mktemp("gen")
    hf.save_pretrained(folder)
    return hf, GPTModel.from_pretrained(folder).eval()


def prompts(n=3, t=5, vocab=211, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab, (n, t), generator=g)


def test_greedy_cache_equals_no_cache(pair):
    _, ours = pair
    idx = prompts()
    torch.testing.assert_close(generate(ours, idx, 40), generate(ours, idx, 40, use_cache=False), rtol=0, atol=0)


def test_greedy_equals_transformers_generate(pair):
    hf, ours = pair
    idx = prompts()
    ref = hf.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=40, do_sample=False,
                      pad_token_id=0, eos_token_id=None)
    out = generate(ours, idx, 40)
    assert out.shape == (3, 45)
    assert len(set(out[0, 5:].tolist())) > 3, "degenerate test model: greedy output barely varies"
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_left_padded_batch_equals_unbatched(pair):
    _, ours = pair
    rows = [prompts(1, 7, seed=2)[0], prompts(1, 3, seed=3)[0], prompts(1, 5, seed=4)[0]]
    t = max(len(r) for r in rows)
    idx = torch.stack([torch.cat([torch.zeros(t - len(r), dtype=torch.long), r]) for r in rows])
    mask = torch.stack([torch.cat([torch.zeros(t - len(r)), torch.ones(len(r))]) for r in rows]).long()
    for use_cache in (True, False):
        out = generate(ours, idx, 20, attention_mask=mask, use_cache=use_cache)
        for i, r in enumerate(rows):
            alone = generate(ours, r[None], 20)
            torch.testing.assert_close(out[i, t - len(r):], alone[0], rtol=0, atol=0)


def test_crop_and_sliding_window(pair):
    _, ours = pair
    long = prompts(2, 70)
    with pytest.raises(ValueError, match="context length is 64.*crop=True"):
        generate(ours, long, 5)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(ours, long[:, :60], 10)
    cropped = generate(ours, long, 5, crop=True)
    torch.testing.assert_close(cropped, generate(ours, long[:, -64:], 5, crop=True), rtol=0, atol=0)
    # Past the context window the cached loop must slide exactly like the uncached one.
    short = long[:, :50]
    torch.testing.assert_close(generate(ours, short, 30, crop=True),
                               generate(ours, short, 30, crop=True, use_cache=False), rtol=0, atol=0)


def test_eos_stops_and_pads(pair):
    _, ours = pair
    idx = prompts(2)
    free = generate(ours, idx, 12)
    eos = int(free[0, 5 + 3])  # row 0 produces this id at its 4th new token
    first_hit = [int((r[5:] == eos).nonzero()[0]) if (r[5:] == eos).any() else None for r in free]
    out = generate(ours, idx, 12, eos_id=eos)
    assert first_hit[0] <= 3
    torch.testing.assert_close(out[0, : 5 + first_hit[0] + 1], free[0, : 5 + first_hit[0] + 1], rtol=0, atol=0)
    assert (out[0, 5 + first_hit[0]:] == eos).all(), "a finished row must be padded with eos_id"
    if first_hit[1] is None:  # row 1 never finishes: it runs the full length, equal to the free run
        torch.testing.assert_close(out[1], free[1], rtol=0, atol=0)


def test_top_k_and_top_p_equal_transformers_warpers():
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    torch.manual_seed(0)
    logits = torch.randn(4, 50) * 3
    torch.testing.assert_close(top_k_filter(logits, 7), TopKLogitsWarper(7)(None, logits.clone()))
    for p in (0.1, 0.5, 0.9):
        ours = top_p_filter(logits, p)
        ref = TopPLogitsWarper(p)(None, logits.clone())
        assert torch.equal(torch.isinf(ours), torch.isinf(ref)), f"top_p={p}: kept sets differ"
        # the kept tokens are the smallest prefix (by probability) whose mass reaches p
        probs = logits.softmax(-1)
        kept_mass = (probs * (~torch.isinf(ours))).sum(-1)
        assert (kept_mass >= p - 1e-6).all()
    with pytest.raises(ValueError):
        top_p_filter(logits, 0.0)
    with pytest.raises(ValueError):
        top_k_filter(logits, 0)


def test_temperature_sampling_matches_softmax():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    g = torch.Generator().manual_seed(0)
    for temperature in (0.5, 2.0):
        draws = torch.cat([sample_next(logits.expand(20000, 4), temperature, generator=g)])[:, 0]
        freq = torch.bincount(draws, minlength=4).float() / draws.numel()
        torch.testing.assert_close(freq, (logits[0] / temperature).softmax(-1), atol=0.015, rtol=0)
    assert sample_next(logits, 0.0).item() == 0
    # top_k=1 with any temperature is greedy
    assert (sample_next(logits.expand(50, 4), 5.0, top_k=1, generator=g) == 0).all()


def test_beam_of_one_is_greedy(pair):
    _, ours = pair
    idx = prompts()
    torch.testing.assert_close(beam_search(ours, idx, 15, num_beams=1), generate(ours, idx, 15), rtol=0, atol=0)


def test_beam_search_equals_transformers(pair):
    hf, ours = pair
    idx = prompts(2)
    ref = hf.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=10, do_sample=False, num_beams=4,
                      pad_token_id=0, eos_token_id=None, early_stopping=False, length_penalty=1.0)
    torch.testing.assert_close(beam_search(ours, idx, 10, num_beams=4), ref, rtol=0, atol=0)


def test_beam_scores_are_log_probs_and_beat_greedy(pair):
    _, ours = pair
    idx = prompts(2)
    out, scores = beam_search(ours, idx, 8, num_beams=5, return_scores=True)
    torch.testing.assert_close(scores, sequence_log_prob(ours, out, 5), atol=1e-4, rtol=1e-5)
    # A wide enough beam is an exact search: with vocab V, 3 new tokens and V**2 beams nothing is pruned.
    tiny = GPTModel(GPTConfig(vocab_size=6, context_length=16, d_model=24, n_heads=2, n_layers=2)).eval()
    with torch.no_grad():
        for p in tiny.parameters():
            p.normal_(0, 0.5)
    start = torch.tensor([[1, 2]])
    best, best_score = beam_search(tiny, start, 3, num_beams=36, return_scores=True)
    all_seqs = torch.tensor([[1, 2, *c] for c in itertools.product(range(6), repeat=3)])
    exhaustive = sequence_log_prob(tiny, all_seqs, 2)
    torch.testing.assert_close(best_score, exhaustive.max()[None], atol=1e-5, rtol=0)
    greedy = generate(tiny, start, 3)
    assert best_score.item() >= sequence_log_prob(tiny, greedy, 2).item() - 1e-6


def test_beam_search_with_eos_freezes_finished_beams(pair):
    _, ours = pair
    idx = prompts(1)
    free = beam_search(ours, idx, 10, num_beams=3)
    eos = int(free[0, 7])
    out, score = beam_search(ours, idx, 10, num_beams=3, eos_id=eos, return_scores=True)
    gen = out[0, 5:]
    hit = int((gen == eos).nonzero()[0])
    assert (gen[hit:] == eos).all()
    # the score counts tokens up to and including the first eos
    torch.testing.assert_close(score, sequence_log_prob(ours, out[:, : 5 + hit + 1], 5), atol=1e-4, rtol=1e-5)


def test_input_errors(pair):
    _, ours = pair
    with pytest.raises(ValueError, match=r"\(batch, seq\)"):
        generate(ours, torch.tensor([1, 2, 3]), 5)
    with pytest.raises(ValueError, match="empty"):
        generate(ours, torch.zeros(1, 0, dtype=torch.long), 5)
    with pytest.raises(ValueError, match="temperature"):
        generate(ours, prompts(1), 2, temperature=-1.0)
    with pytest.raises(ValueError, match="num_beams"):
        beam_search(ours, prompts(1), 2, num_beams=0)


def test_text_round_trip(data_dir):
    from llmscratch.tokenizers import gpt2_tokenizer

    tok = gpt2_tokenizer()
    ids = text_to_ids("Every effort moves you<|endoftext|>", tok)
    assert ids.shape == (1, 5) and ids[0, -1].item() == 50256
    assert ids_to_text(ids, tok) == "Every effort moves you<|endoftext|>"
    assert ids_to_text(ids[0].tolist(), tok) == "Every effort moves you<|endoftext|>"


# ---------------------------------------------------------------------- top-p at GPT-2's vocabulary
def _gpt2_sized_logits(dtype):
    """Seven rows of logits over 50,257 tokens: Gaussian ones of several scales and Zipf-like heavy tails."""
    g = torch.Generator().manual_seed(0)
    v = 50257
    rows = [torch.randn(v, generator=g) * s for s in (1.0, 2.0, 3.0, 4.0)]
    rank = torch.arange(1, v + 1).float()
    rows += [-a * rank.log() + 0.1 * torch.randn(v, generator=g) for a in (0.8, 1.0, 1.2)]
    return torch.stack(rows).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bf16"])
@pytest.mark.parametrize("p", [0.9, 0.99, 0.999])
def test_top_p_keeps_at_least_p_and_no_more_than_needed_at_gpt2_vocab(dtype, p):
    logits = _gpt2_sized_logits(dtype)
    filtered = top_p_filter(logits, p)
    assert filtered.dtype == dtype
    kept = ~torch.isinf(filtered)
    probs = logits.double().softmax(-1)  # the distribution the logits stand for, in float64
    mass = (probs * kept).sum(-1)
    assert (mass >= p - 1e-12).all(), f"kept mass {mass.min().item():.6f} < p = {p}"
    # the smallest such set: the fewest most likely tokens whose float64 mass reaches p
    needed = (probs.sort(-1, descending=True).values.cumsum(-1) < p).sum(-1) + 1
    assert torch.equal(kept.sum(-1), needed), (kept.sum(-1) - needed).tolist()
    # the kept tokens are the most likely ones
    smallest_kept = torch.where(kept, probs, torch.inf).min(-1).values
    largest_dropped = torch.where(kept, -torch.inf, probs).max(-1).values
    assert (smallest_kept >= largest_dropped).all()


def test_sample_next_does_not_filter_bf16_logits_in_bf16():
    logits = _gpt2_sized_logits(torch.bfloat16)
    for p in (0.9, 0.99):
        a = sample_next(logits, 1.0, top_p=p, generator=torch.Generator().manual_seed(3))
        b = sample_next(logits.float(), 1.0, top_p=p, generator=torch.Generator().manual_seed(3))
        assert torch.equal(a, b)


# ---------------------------------------------------------------------- errors that name the fix
def test_sample_next_bad_inputs():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    with pytest.raises(ValueError, match="temperature must be a finite number >= 0.*got nan"):
        sample_next(logits, float("nan"))
    with pytest.raises(ValueError, match="temperature must be a finite number"):
        sample_next(logits, float("inf"))
    with pytest.raises(ValueError, match="temperature=1e-09 is so small .* use temperature=0 for greedy"):
        sample_next(logits, 1e-9)
    with pytest.raises(TypeError, match="temperature must be a number"):
        sample_next(logits, "0.7")
    assert sample_next(logits * 100, 1e-4).item() == 0  # the smallest allowed temperature is still finite
    with pytest.raises(ValueError, match=r"row\(s\) \[1\] hold NaN.*diverged"):
        sample_next(torch.tensor([[0.0, 1.0], [float("nan"), 5.0]]), 0.0)  # greedy returned the NaN's index
    with pytest.raises(ValueError, match=r"row\(s\) \[0\] are all -inf"):
        sample_next(torch.full((1, 4), float("-inf")), 1.0)
    with pytest.raises(ValueError, match=r"logits\[:, -1\]"):
        sample_next(torch.zeros(1, 3, 4), 0.0)
    with pytest.raises(ValueError, match="top_p must be a number in"):
        sample_next(logits, 1.0, top_p=float("nan"))
    with pytest.raises(ValueError, match="top_k must be a positive int"):
        sample_next(logits, 1.0, top_k=2.0)


def test_generate_bad_inputs_name_the_fix(pair):
    _, ours = pair  # vocab_size 211
    idx = prompts(2)
    with pytest.raises(ValueError, match=r"token id 211, outside the model's vocabulary \(0 to 210, "
                       r"vocab_size=211\); .*larger vocabulary"):
        generate(ours, torch.tensor([[5, 211]]), 2)
    with pytest.raises(ValueError, match="token id -100.*ignore_index of the loss .targets.*attention_mask"):
        generate(ours, torch.tensor([[-100, -100, 5]]), 2)
    with pytest.raises(ValueError, match="token id -3.*negative ids are never tokens"):
        beam_search(ours, torch.tensor([[-3, 5]]), 2, num_beams=2)
    with pytest.raises(TypeError, match="integer token ids.*got torch.float32"):
        generate(ours, idx.float(), 2)
    with pytest.raises(ValueError, match=r"eos_id=211 is not a token id of this model \(0 to 210\)"):
        generate(ours, idx, 2, eos_id=211)
    with pytest.raises(ValueError, match="eos_id=-1"):
        beam_search(ours, idx, 2, num_beams=2, eos_id=-1)
    with pytest.raises(TypeError, match="eos_id must be an int token id.*allowed_special"):
        generate(ours, idx, 2, eos_id="<|endoftext|>")
    with pytest.raises(ValueError, match="temperature must be a finite"):
        generate(ours, idx, 2, temperature=float("nan"))
    with pytest.raises(ValueError, match="so small"):
        generate(ours, idx, 2, temperature=1e-12)


def test_ragged_batch_without_mask_warns(pair):
    import warnings

    _, ours = pair
    padded = torch.tensor([[0, 0, 0, 7, 8], [3, 4, 5, 6, 7]])  # row 0 left-padded with id 0
    with pytest.warns(UserWarning, match=r"rows \[0\] .* start with a run of id 0 .* left padding without an "
                      r"attention_mask.*pass attention_mask"):
        generate(ours, padded, 2)
    right = torch.tensor([[7, 8, 9, 9, 9], [3, 4, 5, 6, 7]])
    with pytest.warns(UserWarning, match="right padding"):
        generate(ours, right, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a mask, one row, or unpadded rows: no warning
        generate(ours, padded, 2, attention_mask=(padded != 0).long())
        generate(ours, padded[:1], 2)
        generate(ours, prompts(3), 2)


def test_generate_reports_nan_logits_greedy_and_sampling(pair):
    _, ours = pair
    broken = GPTModel(ours.cfg).eval()
    broken.load_state_dict(ours.state_dict())
    with torch.no_grad():
        broken.final_norm.weight[0] = float("nan")
    for temperature in (0.0, 1.0):
        with pytest.raises(ValueError, match=r"row\(s\) \[0, 1\] hold NaN.*diverged"):
            generate(broken, prompts(2), 3, temperature=temperature)
