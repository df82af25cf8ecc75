"""Checks that need a CUDA GPU; skipped (not faked) on CPU-only machines."""

import dataclasses

import pytest
import torch

from recformer import RecformerForSeqRec, RecformerModel
from recformer.args import FinetuneArgs
from recformer.devices import autocast_context
from recformer.train.finetune import Finetuner

from .finetune_fixtures import make_dataset, make_model_folder, make_pretrained_checkpoint
from .test_modeling import batch_of

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_gpu_forward_matches_cpu_and_fp16_is_close(tokenizer, config):
    model = RecformerModel(config).eval()
    batch = batch_of(tokenizer, [[0, 1, 2], [3], []])
    with torch.no_grad():
        cpu = model(**batch).last_hidden_state
        model.cuda()
        gpu_batch = {k: v.cuda() for k, v in batch.items()}
        gpu = model(**gpu_batch).last_hidden_state.cpu()
        with autocast_context(torch.device("cuda"), fp16=True, bf16=False):
            half = model(**gpu_batch).last_hidden_state.float().cpu()
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(gpu[mask], cpu[mask], atol=1e-4, rtol=1e-4)
    assert torch.nn.functional.cosine_similarity(half[mask], cpu[mask], dim=-1).min() > 0.999


def test_seqrec_scoring_on_gpu(tokenizer, config):
    model = RecformerForSeqRec(config).eval().cuda()
    model.init_item_embedding(torch.randn(1000, config.hidden_size))
    assert model.item_embedding.weight.is_cuda
    with torch.no_grad():
        scores = model(**{k: v.cuda() for k, v in batch_of(tokenizer, [[0, 1]]).items()})
    assert scores.shape == (1, 1000) and scores.is_cuda


@pytest.mark.parametrize("precision, min_cosine, zero_shot_tol", [("fp16", 0.999, 0.02), ("bf16", 0.99, 0.05)])
def test_finetune_with_mixed_precision_on_gpu_stays_close_to_fp32(tmp_path, precision, min_cosine, zero_shot_tol):
    """The same run in fp32 and in mixed precision: the pretrained item vectors nearly coincide, the
    zero-shot metrics agree closely, and training under autocast reaches comparable test metrics."""
    args = FinetuneArgs(
        pretrain_ckpt=str(make_pretrained_checkpoint(tmp_path)),
        data_path=str(make_dataset(tmp_path)),
        model_name_or_path=str(make_model_folder(tmp_path)),
        output_dir=str(tmp_path / "fp32"),
        num_train_epochs=2,
        verbose=1,
        batch_size=8,
        gradient_accumulation_steps=2,
        finetune_negative_sample_size=-1,
        device="cuda",
        progress=False,
    )
    full = Finetuner(args)
    mixed = Finetuner(dataclasses.replace(args, output_dir=str(tmp_path / precision), **{precision: True}))
    cosine = torch.nn.functional.cosine_similarity(mixed.item_vectors(), full.item_vectors(), dim=-1)
    assert cosine.min() > min_cosine, cosine.min()

    reference, metrics = full.run(), mixed.run()
    assert len(metrics["dev"]) >= 2 and mixed.use_scaler == (precision == "fp16")
    for name in ("MRR", "AUC", "NDCG@50"):
        assert metrics["zero_shot_test"][name] == pytest.approx(reference["zero_shot_test"][name], abs=zero_shot_tol), name
        assert metrics["test"][name] == pytest.approx(reference["test"][name], abs=0.1), name


def test_top_k_over_a_million_items_stays_under_one_gigabyte_on_gpu():
    from recformer.inference.ranking import top_k

    from .conftest import tiny_config

    device = torch.device("cuda")
    model = RecformerForSeqRec(tiny_config(hidden_size=768, num_attention_heads=12)).to(device)
    model.init_item_embedding(torch.randn(1_000_000, 768, device=device))
    model.item_norms()  # part of the index
    queries = torch.randn(256, 768, device=device)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    values, rows = top_k(model, queries, 10)
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - base < 2**30
    ref = model.similarity_score(queries[:8]).sort(dim=1, descending=True, stable=True)
    assert torch.equal(rows[:8], ref.indices[:, :10])
    torch.testing.assert_close(values[:8], ref.values[:, :10])


def test_recommender_on_gpu_matches_cpu(tmp_path):
    from recformer import Recommender

    args = (make_pretrained_checkpoint(tmp_path), make_dataset(tmp_path) / "meta_data.json", make_model_folder(tmp_path))
    histories = [["B000000001", "B000000002"], ["B000000005", {"title": "red wool hat", "brand": "acme"}]]
    cpu = Recommender.from_pretrained(*args, device="cpu", progress=False).recommend(histories, k=5)
    gpu = Recommender.from_pretrained(*args, device="cuda", progress=False).recommend(histories, k=5)
    assert [[i for i, _ in row] for row in gpu] == [[i for i, _ in row] for row in cpu]
    assert [s for row in gpu for _, s in row] == pytest.approx([s for row in cpu for _, s in row], abs=1e-3)


def _fast_path_batch(tokenizer, config):
    import random as _random

    from recformer.train.collators import FinetuneCollator

    items = tokenizer.tokenize_items([{"title": f"item {i} red shoe", "brand": "acme"} for i in range(30)])
    rng = _random.Random(0)
    histories = [[rng.randrange(30) for _ in range(rng.randrange(1, 25))] for _ in range(8)]
    return FinetuneCollator(tokenizer, items, _random.Random(0))(histories)


@pytest.mark.parametrize("implementation", ["sdpa", "flex_attention"])
def test_bf16_fast_paths_stay_close_to_fp32_eager(tokenizer, implementation):
    from .conftest import tiny_config

    config = tiny_config(attn_implementation="eager", num_attention_heads=2)  # compiled flex: head dim >= 16
    model = RecformerModel(config).eval().cuda()
    batch = {k: v.cuda() for k, v in _fast_path_batch(tokenizer, config).items() if k != "labels"}
    mask = batch["attention_mask"].bool()
    with torch.no_grad():
        expected = model(**batch).last_hidden_state[mask]
        model.set_attn_implementation(implementation)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            got = model(**batch).last_hidden_state[mask].float()
    torch.testing.assert_close(got, expected, atol=0.1, rtol=0.05)
    assert torch.nn.functional.cosine_similarity(got, expected, dim=-1).min() > 0.99


@pytest.mark.parametrize("implementation", ["sdpa", "flex_attention"])
def test_training_step_on_gpu_matches_eager_and_never_syncs(tokenizer, implementation):
    """A finetuning step (compiled FlexAttention for flex) gives eager's loss and gradients, and runs
    under `torch.cuda.set_sync_debug_mode("error")`: nothing waits for the GPU inside the step."""
    from .conftest import tiny_config

    torch.manual_seed(0)
    config = tiny_config(attn_implementation="eager", finetune_negative_sample_size=5, num_attention_heads=2)
    model = RecformerForSeqRec(config).train().cuda()
    model.init_item_embedding(torch.randn(30, config.hidden_size))
    batch = {k: v.cuda() for k, v in _fast_path_batch(tokenizer, config).items()}
    results = {}
    for name in ("eager", implementation):
        model.set_attn_implementation(name)
        model.zero_grad()
        torch.manual_seed(1)  # the same sampled negatives
        model(**batch).backward()  # warm-up (compilation), then the checked step
        model.zero_grad()
        torch.manual_seed(1)
        if name != "eager":
            torch.cuda.set_sync_debug_mode("error")
        try:
            loss = model(**batch)
            loss.backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        results[name] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    (loss_e, grads_e), (loss_f, grads_f) = results["eager"], results[implementation]
    torch.testing.assert_close(loss_f, loss_e, atol=1e-4, rtol=1e-4)
    for n in grads_e:
        torch.testing.assert_close(grads_f[n], grads_e[n], atol=1e-3, rtol=1e-3, msg=n)
