"""Write a real DeepSpeed ZeRO-2 checkpoint of the pretraining module on CPU (gloo, one process).

Lightning refuses its DeepSpeed strategy on CPU, but DeepSpeed's engine runs ZeRO-2 on CPU when
driven directly. This lays the checkpoint out as Lightning's DeepSpeed strategy does
(`<dir>/checkpoint/mp_rank_00_model_states.pt`, `<dir>/checkpoint/*optim_states.pt`, `<dir>/latest`,
the hyperparameters in the client state). Run in a subprocess so the test process keeps a clean
torch.distributed state:

    python -m tests.zero2_checkpoint START_FOLDER OUT_DIR [--steps N]
"""

from __future__ import annotations

import argparse
import importlib
import os
import random
import socket
import sys
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("start_folder", help="save_pretrained folder of the start point (config, weights, tokenizer)")
    p.add_argument("data_dir", help="folder with meta_data.json and train.json")
    p.add_argument("out_dir")
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args(argv)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")

    import deepspeed
    import torch

    from recformer import RecformerConfig, RecformerForPretraining, RecformerTokenizer
    from recformer.train.collators import PretrainCollator
    from recformer.train.lightning_module import PretrainDataModule, PretrainFiles, RecformerPretrainModule

    torch.manual_seed(0)
    config = RecformerConfig.from_pretrained(args.start_folder)
    tokenizer = RecformerTokenizer.from_pretrained(args.start_folder, config)
    data_dir = Path(args.data_dir)
    files = PretrainFiles(data_dir / "train.json", data_dir / "dev.json", data_dir / "meta_data.json")
    data = PretrainDataModule(tokenizer, files, progress=False)
    data.load()
    model = RecformerForPretraining.from_pretrained(args.start_folder)
    module = RecformerPretrainModule(config, model=model, learning_rate=1e-3, fix_word_embedding=True)

    # DeepSpeed would JIT-compile an optional shared-memory collective for CPU (about a minute);
    # gloo does the same work here, so skip it.
    # (`import deepspeed.comm.torch as m` would bind the torch package: deepspeed.comm imports torch.)
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    deepspeed.init_distributed(dist_backend="gloo")
    engine, _, _, _ = deepspeed.initialize(
        model=module,
        model_parameters=[p for p in module.parameters() if p.requires_grad],
        config={
            "train_batch_size": 4,
            "train_micro_batch_size_per_gpu": 4,
            "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}},
            "zero_optimization": {"stage": 2},
            "gradient_clipping": 1.0,
        },
    )
    collator = PretrainCollator(tokenizer, data.items, 0.15, rng=random.Random(0))
    for step in range(args.steps):
        batch = collator(data.train_sequences[4 * step : 4 * step + 4])
        loss = engine(**batch).loss
        engine.backward(loss)
        engine.step()
        print(f"step {step}: loss {loss.item():.4f}")
    engine.save_checkpoint(args.out_dir, tag="checkpoint", client_state={"hyper_parameters": dict(module.hparams)})
    # What the trained weights are, for the test to compare with the conversion's output.
    torch.save({k: v.detach().clone() for k, v in module.state_dict().items()}, Path(args.out_dir).with_suffix(".expected.pt"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
