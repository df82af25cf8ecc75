"""Model behaviour: agreement with transformers' LongformerModel, pooling, losses, scoring."""

import random

import pytest
import torch
import torch.nn.functional as F
from transformers import LongformerConfig, LongformerModel

from recformer import RecformerForPretraining, RecformerForSeqRec, RecformerModel
from recformer.model.batching import encode_item_sequences
from recformer.train.collators import PretrainCollator

from .conftest import tiny_config

ITEMS = [
    {"title": "red shoe", "brand": "b", "category": "shoes"},
    {"title": "blue shirt", "brand": "acme"},
    {"title": "title brand red", "brand": "x" * 9, "category": "a b c"},
    {"title": "hat"},
    {"title": "socks of wool", "brand": "brand"},
]


def batch_of(tokenizer, sequences):
    table = tokenizer.tokenize_items(ITEMS)
    return encode_item_sequences(tokenizer, table, sequences)


def longformer_twin(config):
    """A LongformerModel and a RecformerModel that must compute the same hidden states."""
    lf_config = LongformerConfig(**{k: getattr(config, k) for k in (
        "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
        "max_position_embeddings", "layer_norm_eps", "hidden_dropout_prob", "attention_probs_dropout_prob",
        "pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id")}, attention_window=list(config.attention_window), type_vocab_size=1)
    reference = LongformerModel(lf_config, add_pooling_layer=False).eval()
    ours = RecformerModel(config).eval()
    state = {k: v for k, v in reference.state_dict().items()}
    state["embeddings.token_type_embeddings.weight"] = state["embeddings.token_type_embeddings.weight"].expand(4, -1)
    state["embeddings.item_position_embeddings.weight"] = torch.zeros_like(
        ours.embeddings.item_position_embeddings.weight
    )
    state["embeddings.position_ids"] = ours.embeddings.position_ids
    ours.load_state_dict(state, strict=True)
    return reference, ours


@pytest.mark.parametrize(
    "sequences",
    [
        [[0, 1], [2], [3, 4, 0]],  # lengths that need window padding
        [[], [1]],  # an empty history
    ],
)
def test_encoder_matches_longformer_model(tokenizer, config, sequences):
    reference, ours = longformer_twin(config)
    batch = batch_of(tokenizer, sequences)
    with torch.no_grad():
        expected = reference(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            global_attention_mask=batch["global_attention_mask"],
        ).last_hidden_state
        got = ours(**batch).last_hidden_state
    mask = batch["attention_mask"].bool()
    assert got.shape == expected.shape
    torch.testing.assert_close(got[mask], expected[mask], atol=1e-5, rtol=1e-5)


def test_encoder_matches_longformer_without_window_padding(tokenizer, config):
    reference, ours = longformer_twin(config)
    batch = batch_of(tokenizer, [[0], [1]])
    batch = {k: v[:, :8] for k, v in batch.items()}  # exactly one window of 8
    assert batch["input_ids"].shape[1] % max(config.attention_window) == 0
    with torch.no_grad():
        expected = reference(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            global_attention_mask=batch["global_attention_mask"],
        ).last_hidden_state
        got = ours(**batch).last_hidden_state
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_item_positions_and_token_types_change_the_output(tokenizer, config):
    model = RecformerModel(config).eval()
    batch = batch_of(tokenizer, [[0, 1]])
    with torch.no_grad():
        base = model(**batch).pooler_output
        shifted = model(**{**batch, "item_position_ids": batch["item_position_ids"].clamp(max=1)}).pooler_output
    assert not torch.allclose(base, shifted)


def test_cls_pooler_is_token_zero_and_avg_pooler_survives_window_padding(tokenizer):
    batch = batch_of(tokenizer, [[0, 1], [3]])  # length 27: padded to 32 inside the model
    assert batch["input_ids"].shape[1] % 8 != 0
    cls_model = RecformerModel(tiny_config()).eval()
    avg_model = RecformerModel(tiny_config(pooler_type="avg")).eval()
    avg_model.load_state_dict(cls_model.state_dict())
    with torch.no_grad():
        out = cls_model(**batch)
        torch.testing.assert_close(out.pooler_output, out.last_hidden_state[:, 0])
        avg = avg_model(**batch)
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected = (avg.last_hidden_state * mask).sum(1) / mask.sum(1)
    torch.testing.assert_close(avg.pooler_output, expected)


def test_unbatched_sequence_is_accepted(tokenizer, config):
    model = RecformerModel(config).eval()
    single = tokenizer(ITEMS[:2], return_tensor=True)
    batched = tokenizer([ITEMS[:2]], return_tensor=True)
    with torch.no_grad():
        torch.testing.assert_close(model(**single).pooler_output, model(**batched).pooler_output)


def test_missing_item_position_ids_is_a_clear_error(tokenizer, config):
    batch = batch_of(tokenizer, [[0]])
    del batch["item_position_ids"]
    with pytest.raises(ValueError, match="item_position_ids are required"):
        RecformerModel(config)(**batch)


def test_pretraining_loss_equals_hand_computation(tokenizer, config):
    model = RecformerForPretraining(config).eval()
    collator = PretrainCollator(tokenizer, tokenizer.tokenize_items(ITEMS), rng=random.Random(3))
    batch = collator([[0, 1, 2], [3, 4], [1, 2, 3, 4], [4, 0]])
    with torch.no_grad():
        out = model(**batch)

        def side(s):
            return {k[:-2]: v for k, v in batch.items() if k.endswith("_" + s) and not k.startswith("mlm")}

        za = model.longformer(**side("a")).pooler_output
        zb = model.longformer(**side("b")).pooler_output
        sim = F.cosine_similarity(za.unsqueeze(1), zb.unsqueeze(0), dim=-1) / config.temp  # [B, B]
        cl = -torch.log_softmax(sim, dim=1).diagonal().mean()
        mlm = []
        for s in "ab":
            logits = model.lm_head(model.longformer(**{**side(s), "input_ids": batch[f"mlm_input_ids_{s}"]}).last_hidden_state)
            labels = batch[f"mlm_labels_{s}"]
            picked = labels != -100
            # one mean over all masked tokens of the batch
            mlm.append(-torch.log_softmax(logits[picked], dim=-1).gather(1, labels[picked].unsqueeze(1)).mean())
    torch.testing.assert_close(out.logits, sim, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.cl_loss, cl, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss, cl + config.mlm_weight * (mlm[0] + mlm[1]), atol=1e-5, rtol=1e-5)
    assert out.cl_total_num == 4
    assert out.cl_correct_num.item() == int((sim.argmax(1) == torch.arange(4)).sum())


def test_pretraining_loss_backpropagates_and_lm_bias_is_tied(tokenizer, config):
    model = RecformerForPretraining(config).train()
    assert model.lm_head.decoder.bias is model.lm_head.bias
    batch = PretrainCollator(tokenizer, tokenizer.tokenize_items(ITEMS), rng=random.Random(0))([[0, 1], [2, 3, 4]])
    model(**batch).loss.backward()
    assert model.lm_head.bias.grad is not None
    assert model.longformer.embeddings.item_position_embeddings.weight.grad.abs().sum() > 0


def test_seqrec_scores_match_cosine_form(tokenizer, config):
    model = RecformerForSeqRec(config).eval()
    table = torch.randn(7, config.hidden_size)
    model.init_item_embedding(table)
    assert model.config.item_num == 7 and not model.item_embedding.weight.requires_grad
    batch = batch_of(tokenizer, [[0, 1], [2]])
    with torch.no_grad():
        scores = model(**batch)
        pooled = model.longformer(**batch).pooler_output
    expected = F.cosine_similarity(pooled.unsqueeze(1), table.unsqueeze(0), dim=-1) / config.temp
    assert scores.shape == (2, 7)
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-5)


def test_seqrec_full_softmax_and_sampled_losses(tokenizer):
    config = tiny_config(finetune_negative_sample_size=0)
    model = RecformerForSeqRec(config).eval()
    model.init_item_embedding(torch.randn(6, config.hidden_size))
    batch = batch_of(tokenizer, [[0, 1], [2]])
    labels = torch.tensor([3, 5])
    with torch.no_grad():
        loss = model(**batch, labels=labels)
        scores = model(**batch)
    torch.testing.assert_close(loss, F.cross_entropy(scores, labels))

    model.config.finetune_negative_sample_size = 3
    candidates = model.sample_candidates(torch.tensor([0, 5] * 200), 5)
    assert candidates.shape == (400, 6)
    assert (candidates[:, 0] == torch.tensor([0, 5] * 200)).all()
    assert not (candidates[:, 1:] == candidates[:, :1]).any()  # negatives never include the positive
    assert candidates.min() >= 0 and candidates.max() <= 5
    with torch.no_grad():
        sampled_loss = model(**batch, labels=labels)
        drawn = torch.tensor([[3, 0, 1], [5, 2, 2]])  # candidates drawn by the caller, the positive first
        given_loss = model(**batch, labels=labels, candidates=drawn)
    assert torch.isfinite(sampled_loss)
    torch.testing.assert_close(given_loss, F.cross_entropy(scores.gather(1, drawn), torch.zeros(2, dtype=torch.long)))


def test_candidate_scores_equal_full_scores_at_those_items(tokenizer, config):
    model = RecformerForSeqRec(config).eval()
    model.init_item_embedding(torch.randn(9, config.hidden_size))
    batch = batch_of(tokenizer, [[0, 1], [2]])
    candidates = torch.tensor([[1, 4, 8], [0, 0, 3]])
    with torch.no_grad():
        full = model(**batch)
        part = model(**batch, candidates=candidates)
    torch.testing.assert_close(part, full.gather(1, candidates))


def test_seqrec_requires_an_item_table(tokenizer, config):
    with pytest.raises(RuntimeError, match="init_item_embedding"):
        RecformerForSeqRec(config)(**batch_of(tokenizer, [[0]]))
    with pytest.raises(ValueError, match=r"item embeddings must be \[num_items, 32\]"):
        RecformerForSeqRec(config).init_item_embedding(torch.zeros(3, 5))


def test_side_with_nothing_masked_contributes_zero(tokenizer, config):
    model = RecformerForPretraining(config).eval()
    batch = PretrainCollator(tokenizer, tokenizer.tokenize_items(ITEMS), rng=random.Random(0))([[0, 1], [2, 3]])
    batch["mlm_labels_b"] = torch.full_like(batch["mlm_labels_b"], -100)
    out = model(**batch)
    assert torch.isfinite(out.loss) and out.mlm_loss_b.item() == 0.0
    torch.testing.assert_close(out.loss, out.cl_loss + config.mlm_weight * out.mlm_loss_a)
    out.loss.backward()
    assert model.lm_head.dense.weight.grad is not None


@pytest.mark.parametrize("chunk_size", [1, 4, 9, 40])
def test_chunked_scoring_equals_one_product(tokenizer, config, chunk_size):
    model = RecformerForSeqRec(config).eval()
    model.init_item_embedding(torch.randn(37, config.hidden_size))
    batch = batch_of(tokenizer, [[0, 1], [2], [3, 4, 0]])
    with torch.no_grad():
        pooled = model.longformer(**batch).pooler_output
        whole = model.similarity_score(pooled)
        chunked = model.similarity_score(pooled, chunk_size=chunk_size)
    assert chunked.shape == (3, 37) and chunked.dtype == torch.float32
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=1e-6)


def test_pretraining_refuses_inputs_embeds_and_tuple_output(tokenizer, config):
    model = RecformerForPretraining(config).eval()
    batch = PretrainCollator(tokenizer, tokenizer.tokenize_items(ITEMS), rng=random.Random(0))([[0, 1], [2, 3]])
    with pytest.raises(NotImplementedError, match="takes input ids"):
        model(**batch, inputs_embeds=torch.zeros(2, 3, config.hidden_size))
    with pytest.raises(NotImplementedError, match="always returns a RecformerPretrainingOutput"):
        model(**batch, return_dict=False)
    assert model(**batch, return_dict=True).loss is not None
