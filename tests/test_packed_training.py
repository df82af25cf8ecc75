"""Packed finetuning batches (`FinetuneCollator(pack_tokens=...)`) train exactly as padded ones: same draws,
same loss (1e-5) and same gradients (1e-4) on the sdpa path; the same loss on flex_attention (forward only:
torch's FlexAttention has no backward on CPU; on a CUDA GPU both paths are checked with gradients)."""

import random

import pytest
import torch

from recformer import RecformerForPretraining, RecformerForSeqRec, RecformerTokenizer
from recformer.model.item_tokens import TokenizedItems
from recformer.model.packing import pack_rows, row_tokens
from recformer.train.collators import FinetuneCollator, GlobalBatchCollator, PretrainCollator

from .conftest import TINY_TOKENIZER_DIR
from .finetune_fixtures import finetune_config
from .test_vectorised_collators import histories, random_items

N_ITEMS = 40


def setup(negatives: int, implementation: str = "sdpa", **overrides):
    config = finetune_config(attention_window=[16, 16], **overrides)
    tok = RecformerTokenizer.from_pretrained(str(TINY_TOKENIZER_DIR), config)
    table = TokenizedItems.from_lists(tok.tokenize_items(random_items(N_ITEMS, seed=negatives)))
    torch.manual_seed(0)
    model = RecformerForSeqRec(config)
    model.init_item_embedding(torch.randn(N_ITEMS, config.hidden_size))
    model.set_attn_implementation(implementation)
    model.train()
    padded = FinetuneCollator(tok, table, random.Random(5), num_negatives=negatives)
    packed = FinetuneCollator(tok, table, random.Random(5), num_negatives=negatives, pack_tokens=1024)
    return model, padded, packed


def loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    loss = model(**batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_loss_and_gradients(model, padded: dict, packed: dict) -> None:
    """The packed batch gives the padded batch's loss (1e-5) and gradients (1e-4)."""
    loss_a, grads_a = loss_and_grads(model, padded)
    loss_b, grads_b = loss_and_grads(model, packed)
    assert abs(loss_a.item() - loss_b.item()) <= 1e-5
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 10
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-4, atol=1e-4, msg=name)


@pytest.mark.parametrize("negatives", [0, 6])
def test_packed_batches_give_the_padded_loss_and_gradients(negatives):
    model, padded, packed = setup(negatives)
    for step in range(3):
        seqs = histories(N_ITEMS, 16, seed=step, longest=40)
        a, b = padded(seqs), packed(seqs)
        assert torch.equal(a["labels"], b["labels"]) and ("candidates" in a) == (negatives > 0)
        if negatives:
            assert torch.equal(a["candidates"], b["candidates"])
        assert b["input_ids"].size(0) < a["input_ids"].size(0)  # several histories a row
        assert int(b["attention_mask"].sum()) == int(a["attention_mask"].sum())
        assert_same_loss_and_gradients(model, a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("implementation", ["sdpa", "flex_attention"])
def test_packed_batches_give_the_padded_loss_and_gradients_on_cuda(implementation):
    model, padded, packed = setup(4, implementation, num_attention_heads=2)  # compiled flex: head dim >= 16
    model.cuda()
    seqs = histories(N_ITEMS, 16, seed=11, longest=40)
    a, b = ({k: v.cuda() for k, v in batch.items()} for batch in (padded(seqs), packed(seqs)))
    assert_same_loss_and_gradients(model, a, b)


def test_packed_batches_give_the_padded_loss_on_flex_attention():
    model, padded, packed = setup(3, "flex_attention")
    seqs = histories(N_ITEMS, 8, seed=9, longest=30)
    with torch.no_grad():
        loss_a, loss_b = model(**padded(seqs)), model(**packed(seqs))
    assert abs(loss_a.item() - loss_b.item()) <= 1e-5


def test_packed_global_batches_keep_the_micro_batches_and_their_rows():
    _, padded, packed = setup(2)
    seqs = histories(N_ITEMS, 10, seed=3)
    a = GlobalBatchCollator(padded, seed=1, micro_batch=4)((0, seqs))
    b = GlobalBatchCollator(packed, seed=1, micro_batch=4)((0, seqs))
    assert [n for _, n in a.micro] == [n for _, n in b.micro] == [4, 4, 2]
    for (rows_a, _), (rows_b, _) in zip(a.micro, b.micro):
        assert torch.equal(rows_a["labels"], rows_b["labels"]) and len(rows_b["sequence_starts"]) == len(rows_a["labels"])


def test_pack_tokens_below_max_token_num_is_refused():
    _, padded, _ = setup(0)
    with pytest.raises(ValueError, match="pack_tokens=512 is less than max_token_num=1024"):
        FinetuneCollator(padded.tokenizer, padded.item_table, pack_tokens=512)


def test_train_pack_tokens_chooses_by_mode_and_attention():
    from recformer.train.collators import train_pack_tokens

    assert train_pack_tokens("off", "sdpa", 1024) is None
    assert train_pack_tokens("auto", "eager", 1024) is None
    assert train_pack_tokens("auto", "sdpa", 1024) == train_pack_tokens("on", "flex_attention", 1024) == 1024
    with pytest.raises(ValueError, match="--pack_train_batches on needs --attn_implementation sdpa"):
        train_pack_tokens("on", "eager", 1024)
    with pytest.raises(ValueError, match="must be one of off, on, auto"):
        train_pack_tokens("yes", "sdpa", 1024)


def test_a_packed_finetuning_run_trains_as_the_padded_one(tmp_path):
    """One epoch of the finetuning command with --pack_train_batches on gives the padded run's step losses
    (float rounding aside; without dropout); `on` with eager attention stops at start-up."""
    import json
    from dataclasses import replace

    from recformer.train.finetune import Finetuner

    from .finetune_fixtures import make_dataset, make_model_folder, make_pretrained_checkpoint
    from .test_finetune import make_args

    assets = {"model": make_model_folder(tmp_path), "ckpt": make_pretrained_checkpoint(tmp_path),
              "data": make_dataset(tmp_path)}  # fmt: skip
    config_file = assets["model"] / "config.json"  # no dropout: its draws differ between the two layouts
    config = json.loads(config_file.read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    config_file.write_text(json.dumps(config))
    losses = {}
    for mode in ("off", "on"):
        args = make_args(assets, tmp_path / mode, num_train_epochs=1, pack_train_batches=mode, attn_implementation="sdpa")
        Finetuner(args).run()
        log = (tmp_path / mode / "Tiny" / "train_log.jsonl").read_text().splitlines()
        losses[mode] = [json.loads(line)["loss"] for line in log if "loss" in json.loads(line)]
    assert len(losses["on"]) == len(losses["off"]) > 0
    for a, b in zip(losses["off"], losses["on"]):
        assert abs(a - b) <= 1e-4 * max(1.0, abs(a))
    args = make_args(assets, tmp_path / "eager", pack_train_batches="on", attn_implementation="eager")
    with pytest.raises(ValueError, match="--pack_train_batches on needs"):
        Finetuner(replace(args))


# -- pretraining -----------------------------------------------------------------------------------


def pretrain_setup(implementation: str = "sdpa", **overrides):
    config = finetune_config(attention_window=[16, 16], **overrides)
    tok = RecformerTokenizer.from_pretrained(str(TINY_TOKENIZER_DIR), config)
    table = TokenizedItems.from_lists(tok.tokenize_items(random_items(N_ITEMS, seed=2)))
    torch.manual_seed(0)
    model = RecformerForPretraining(config)
    model.set_attn_implementation(implementation)
    model.train()
    padded = PretrainCollator(tok, table, rng=random.Random(5))
    packed = PretrainCollator(tok, table, rng=random.Random(5), pack_tokens=1024)
    return model, padded, packed


def pairs(seed: int, count: int = 16) -> list:
    return [seq for seq in histories(N_ITEMS, 2 * count, seed=seed, longest=40) if len(seq) >= 2][:count]


def pretraining_losses_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    out = model(**batch)
    out.loss.backward()
    losses = torch.stack([out.loss, out.cl_loss, out.mlm_loss_a, out.mlm_loss_b]).detach()
    return losses, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def masked_tokens(batch: dict, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(the masked copy's tokens at the masked positions, their labels) of a padded or a packed batch."""
    positions = batch[f"mlm_positions_{side}"]
    if "packed" in batch:
        return batch["packed"]["input_ids"].reshape(-1)[positions], batch[f"mlm_labels_{side}"]
    return batch[f"mlm_input_ids_{side}"].reshape(-1)[positions], batch[f"mlm_labels_{side}"].reshape(-1)[positions]


@pytest.mark.parametrize("pack_sides", [False, True])
def test_packed_pretraining_batches_give_the_padded_losses_and_gradients(pack_sides):
    """Every part of the loss within 1e-5 and every gradient within 1e-4 of the padded batch (which runs a pass
    per side, or both sides in one pass with `pack_sides`), from the same draws and masks."""
    model, padded, packed = pretrain_setup()
    model.config.pack_sides = pack_sides
    for step in range(3):
        seqs = pairs(seed=step)
        a, b = padded(seqs), packed(seqs)
        assert set(b) == {"packed", "mlm_positions_a", "mlm_labels_a", "mlm_positions_b", "mlm_labels_b"}
        real = sum(int(a[f"attention_mask_{side}"].sum()) for side in "ab")
        assert int(b["packed"]["attention_mask"].sum()) == 2 * real  # each side and its MLM copy
        assert b["packed"]["input_ids"].numel() < 2 * (a["input_ids_a"].numel() + a["input_ids_b"].numel())
        for side in "ab":
            for got, expected in zip(masked_tokens(b, side), masked_tokens(a, side)):
                assert torch.equal(got, expected) and got.numel() > 0
        (losses_a, grads_a), (losses_b, grads_b) = (pretraining_losses_and_grads(model, x) for x in (a, b))
        torch.testing.assert_close(losses_b, losses_a, rtol=0, atol=1e-5)
        assert grads_a.keys() == grads_b.keys() and len(grads_a) > 10
        for name in grads_a:
            torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-4, atol=1e-4, msg=name)


def test_packed_pretraining_batches_give_the_padded_losses_on_flex_attention():
    model, padded, packed = pretrain_setup("flex_attention")
    seqs = pairs(seed=4, count=8)
    with torch.no_grad():
        got, expected = model(**packed(seqs)), model(**padded(seqs))
    for name in ("loss", "cl_loss", "mlm_loss_a", "mlm_loss_b"):
        torch.testing.assert_close(getattr(got, name), getattr(expected, name), rtol=0, atol=1e-5, msg=name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("implementation", ["sdpa", "flex_attention"])
def test_packed_pretraining_batches_give_the_padded_losses_and_gradients_on_cuda(implementation):
    model, padded, packed = pretrain_setup(implementation, num_attention_heads=2)  # compiled flex: head dim >= 16
    model.cuda()
    seqs = pairs(seed=7)
    on_cuda = [{k: ({n: t.cuda() for n, t in v.items()} if isinstance(v, dict) else v.cuda()) for k, v in x.items()}
               for x in (padded(seqs), packed(seqs))]  # fmt: skip
    (losses_a, grads_a), (losses_b, grads_b) = (pretraining_losses_and_grads(model, x) for x in on_cuda)
    torch.testing.assert_close(losses_b, losses_a, rtol=0, atol=1e-5)
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-4, atol=1e-4, msg=name)


def test_packed_pretraining_batches_are_refused_where_they_cannot_run():
    model, _, packed = pretrain_setup("eager")
    batch = packed(pairs(seed=1, count=4))
    with pytest.raises(ValueError, match="packed inputs \\(segment_ids\\) need attn_implementation"):
        model(**batch)
    model.set_attn_implementation("sdpa")
    with pytest.raises(ValueError, match="packed pretraining batches return no attentions or hidden states"):
        model(**batch, output_hidden_states=True)
    without = {k: v for k, v in batch.items() if k != "mlm_positions_b"}
    with pytest.raises(ValueError, match="packed pretraining batches need mlm_positions_a/b and mlm_labels_a/b"):
        model(**without)


def test_row_tokens_picks_the_row_width_that_computes_the_fewest_tokens():
    assert row_tokens([560] * 32 + [20] * 32, 1024) == 560  # two 560-token histories never share a 1,024 row
    assert row_tokens([150] * 6, 1024) == 512  # 6 x 256, 2 x 512 or 1 x 1,024 tokens: the narrower of the ties
    assert row_tokens([73] * 60 + [300], 1024) == 300
    assert row_tokens([100] * 16, 1024) == 256  # at least ROW_TOKENS
    assert row_tokens([1024, 5], 1024) == 1024
    assert row_tokens([100] * 3) == 256 and row_tokens([900]) == 900  # no cap given: the longest
    with pytest.raises(ValueError, match="sequence 1 has 300 tokens, more than max_tokens=256"):
        pack_rows([10, 300], row_tokens([10, 300], 256))
