"""The Lightning module and the pretraining data module (CPU, tiny config)."""

from __future__ import annotations

import pytest
import torch

pl = pytest.importorskip("pytorch_lightning")

from recformer import RecformerForPretraining  # noqa: E402
from recformer.train.lightning_module import PretrainDataModule, PretrainFiles, RecformerPretrainModule  # noqa: E402

from .conftest import TINY_TOKENIZER_DIR  # noqa: E402
from .pretrain_fixtures import write_corpus  # noqa: E402


def test_parameter_groups_and_frozen_word_embeddings(config):
    module = RecformerPretrainModule(config, fix_word_embedding=True, weight_decay=0.01)
    decay, no_decay = module.parameter_groups()
    names = {id(p): n for n, p in module.model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    decay_names = {names[id(p)] for p in decay["params"]}
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert "lm_head.bias" in no_decay_names and "longformer.embeddings.LayerNorm.weight" in no_decay_names
    assert "lm_head.layer_norm.weight" in no_decay_names
    assert "longformer.encoder.layer.0.attention.self.query.weight" in decay_names
    assert "longformer.embeddings.word_embeddings.weight" not in decay_names | no_decay_names


@pytest.fixture
def data_module(tmp_path, tokenizer):
    paths = write_corpus(tmp_path / "data", n_items=40, n_train=24, n_dev=12)
    files = PretrainFiles(paths["train"], paths["dev"], paths["meta"])
    dm = PretrainDataModule(tokenizer, files, batch_size=4, progress=False, cache_dir=tmp_path / "cache")
    dm.load()
    return dm


def test_validation_batches_are_deterministic(data_module):
    first = next(iter(data_module.val_dataloader()))
    again = next(iter(data_module.val_dataloader()))
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert (first["mlm_labels_a"] != -100).any()


def test_fit_with_frozen_embeddings_and_schedule(tmp_path, config, data_module):
    torch.manual_seed(0)
    model = RecformerForPretraining(config)
    words = model.longformer.embeddings.word_embeddings.weight.detach().clone()
    dense = model.longformer.encoder.layer[0].output.dense.weight.detach().clone()
    module = RecformerPretrainModule(config, model=model, learning_rate=1e-3, warmup_steps=2, fix_word_embedding=True)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=4, val_check_interval=3, check_val_every_n_epoch=None,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=1)  # fmt: skip
    trainer.fit(module, datamodule=data_module)
    assert trainer.global_step == 4
    assert torch.equal(model.longformer.embeddings.word_embeddings.weight, words)
    assert not torch.equal(model.longformer.encoder.layer[0].output.dense.weight, dense)
    # linear warm-up over 2 steps, then linear decay to 0 at the estimated 4 stepping batches
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert [scheduler.lr_lambdas[0](s) for s in range(5)] == pytest.approx([0.0, 0.5, 1.0, 0.5, 0.0])
    assert scheduler.get_last_lr()[0] == 0.0
    metrics = trainer.callback_metrics
    for name in ("train_loss", "train_accuracy", "train_mlm_loss_a", "train_mlm_loss_b", "lr", "val_loss", "val_accuracy"):
        assert name in metrics, name
    # validation accuracy = correct / total over the whole dev set (12 pairs in batches of 4)
    assert 0.0 <= float(metrics["val_accuracy"]) <= 1.0
    assert (module._val_total, float(metrics["val_accuracy"])) == (12, pytest.approx(module._val_correct / 12))


def test_hyperparameters_rebuild_the_module(config):
    module = RecformerPretrainModule(config, learning_rate=3e-4)
    rebuilt = RecformerPretrainModule(**module.hparams)
    assert rebuilt.model.config.hidden_size == config.hidden_size and rebuilt.hparams.learning_rate == 3e-4


def test_tiny_tokenizer_fixture_exists():
    assert (TINY_TOKENIZER_DIR / "vocab.json").is_file()


def test_packed_data_module_serves_the_padded_batches_packed(data_module, config):
    """With `pack_tokens` the data module's batches are its padded batches laid out by `collators.pack_pairs`
    (the same pairs and masks), and the Lightning module trains and validates on them."""
    from recformer.train.collators import pack_pairs
    from recformer.train.lightning_module import batch_pairs, batch_tokens

    padded = list(data_module.val_dataloader())
    data_module.pack_tokens = data_module.tokenizer.config.max_token_num
    packed = list(data_module.val_dataloader())
    assert len(packed) == len(padded) == 3
    for a, b in zip(padded, packed):
        expected = pack_pairs(a, data_module.pack_tokens, data_module.tokenizer)
        assert b.keys() == expected.keys() and b["packed"].keys() == expected["packed"].keys()
        assert all(torch.equal(b["packed"][k], expected["packed"][k]) for k in b["packed"])
        assert all(torch.equal(b[k], expected[k]) for k in b if k != "packed")
        assert batch_pairs(b) == batch_pairs(a) == 4 and int(batch_tokens(b)) == int(batch_tokens(a))
    torch.manual_seed(0)
    model = RecformerForPretraining(config)
    model.set_attn_implementation("sdpa")
    module = RecformerPretrainModule(config, model=model, learning_rate=1e-3)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=3, val_check_interval=3, check_val_every_n_epoch=None,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=1)  # fmt: skip
    trainer.fit(module, datamodule=data_module)
    assert trainer.global_step == 3 and module._val_total == 12
    assert all(torch.isfinite(trainer.callback_metrics[k]) for k in ("train_loss", "val_loss", "train_mlm_loss_b"))
