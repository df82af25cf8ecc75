"""Throughput of the encoder, "eager" (transformers' Longformer attention, today's path) against each fast
attention implementation, in one run on one device.

Parts (`--parts`):
- items: encode `--items` catalogue items drawn from the demo catalogue (its token-length distribution):
  eager in today's padded batches of `--eager_batch`, each fast implementation through
  `evaluation.encode_items` (packed rows, token-budget batches);
- finetune: a finetuning step (forward, backward, AdamW) of RecformerForSeqRec at batch `--batch`, for
  histories of up to each of `--lengths` tokens (between half of it and all of it); "sdpa:packed" and
  "flex_attention:packed" lay the same histories out packed (`--pack_train_batches on`: several a row,
  rows of up to the largest of `--lengths` tokens, as wide as `packing.row_tokens` picks) instead of padded to the longest; ":compiled" (after any
  other variant, joined by "+": "sdpa:one_pass+compiled") compiles the encoder as `--compile` does;
- pretrain: a pretraining step of RecformerForPretraining at batch `--batch` (history side of up to the
  largest of `--lengths` tokens, next-item side, whole-word MLM on both); "sdpa:one_pass" runs both sides
  in one packed pass (`RecformerConfig.pack_sides`) instead of one pass per side; "sdpa:packed" packs both
  sides of every pair and their MLM copies into rows (`lightning_pretrain.py --pack_train_batches on`);
- budget: item encoding with "auto" at each token budget of `--budgets` (what `evaluation.TOKEN_BUDGET`
  should be on the device: the fastest within memory);
- evaluation (CPU goal): a full evaluation of the demo data at the demo model size (encode the
  catalogue, score every test user, compute the metrics): today's path (eager, batch 16 padded to the
  longest and to the window, reproduced here) against the library's (`--attn_implementation auto`,
  token-budget batches), same metrics, wall time and peak RSS during the evaluation (the set-up's peak
  is reset first, Linux), a fresh process each. "today" runs with
  glibc's default malloc policy, as the original code did; "library" (and every case of the other parts)
  with `devices.keep_freed_memory`, as the commands run; "today_kept" is today's path with that setting
  too, to show what the setting alone is worth.

Each figure: items/s or sequences/s, real (non-pad) tokens/s, model FLOP utilisation and peak memory.
FLOPs are counted from real tokens: 2 x P per token forward and 6 x P for a training step, P the
encoder's non-embedding parameters (plus the LM head on masked tokens in pretraining); the peak is the
card's dense bf16 figure from `GPU_PEAKS` when the card is listed, else a measured matmul peak (the
JSON says which). Memory: CUDA peak allocated, or on CPU the peak RSS of a fresh process per case.
Cases alternate over `--repeats` rounds and medians are reported (cores shared with other jobs).

    python bench/bench_throughput.py --device cuda --output bench/results/gpu_throughput.json   # full sizes
    python bench/bench_throughput.py --device cpu --size small --items 400 --steps 2 --lengths 128 512 1024 \\
        --output bench/results/cpu_throughput.json
    python bench/bench_throughput.py --device cpu --parts evaluation --output bench/results/cpu_evaluation.json
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recformer import RecformerConfig, RecformerForPretraining, RecformerForSeqRec  # noqa: E402
from recformer.devices import InferenceSettings, keep_freed_memory  # noqa: E402
from recformer.inference.evaluation import encode_items, evaluate, to_device  # noqa: E402
from recformer.metrics import compute_ranks, metrics_from_ranks  # noqa: E402
from recformer.model.attention import resolve_attn_implementation  # noqa: E402
from recformer.model.batching import encode_item_sequences, pack_item_sequences  # noqa: E402
from recformer.model.tokenization import RecformerTokenizer, build_bpe_tokenizer  # noqa: E402
from recformer.train.collators import EvalCollator, PretrainCollator  # noqa: E402

SIZES = {
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024),
    # scripts/demo/prepare_model.py's defaults (window 32, 256 tokens)
    "demo": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256),
}
# Dense bf16/fp16 tensor-core peaks (FLOP/s, no sparsity) from the vendors' data sheets.
GPU_PEAKS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12}
DEMO_RAW = ROOT / "data/demo/raw"


# -- data ------------------------------------------------------------------------------------------


def demo_catalogue() -> list[dict[str, str]]:
    """Every item of the demo catalogues (finetuning and pretraining), as attribute dicts."""
    from recformer.data.amazon import iter_meta

    logging.getLogger("recformer.data.amazon").setLevel(logging.ERROR)  # the demo's deliberately bad lines
    items = []
    for path in sorted(glob.glob(str(DEMO_RAW / "*/meta_*.json.gz"))):
        items += [rec for _, rec in iter_meta(path, progress=False)]
    return items


def demo_tokenizer(items: list[dict[str, str]], folder: str, config: RecformerConfig) -> RecformerTokenizer:
    """A BPE vocabulary trained on the demo item texts, as `make demo` builds it."""
    texts = [t for item in items for pair in item.items() for t in pair]
    build_bpe_tokenizer(texts, folder, vocab_size=3000)
    return RecformerTokenizer.from_pretrained(folder, config)


def build_config(size: str, vocab: int, window: int, max_tokens: int) -> RecformerConfig:
    dims = SIZES[size]
    return RecformerConfig(
        **dims,
        vocab_size=vocab,
        max_position_embeddings=max_tokens + 6,
        attention_window=[window] * dims["num_hidden_layers"],
        max_attr_num=3,
        max_attr_length=32,
        max_item_embeddings=51,
        max_token_num=max_tokens,
        attention_probs_dropout_prob=0.0,  # FlexAttention has none; the same for every implementation
        type_vocab_size=1,
        finetune_negative_sample_size=1000,
    )


def histories(rng: random.Random, item_lengths: list[int], count: int, low: int, high: int) -> list[list[int]]:
    """`count` random item-id sequences of between `low` and `high` tokens once encoded."""
    out = []
    for _ in range(count):
        target, seq, tokens = rng.randint(low, high), [], 1
        while len(seq) < 50:
            i = rng.randrange(len(item_lengths))
            if tokens + item_lengths[i] > target:
                break
            seq.append(i)
            tokens += item_lengths[i]
        out.append(seq or [rng.randrange(len(item_lengths))])
    return out


# -- measuring -------------------------------------------------------------------------------------


def encoder_parameters(model: torch.nn.Module) -> int:
    """Non-embedding parameters of the encoder (what a token's matrix products touch)."""
    encoder = model.longformer if hasattr(model, "longformer") else model
    return sum(p.numel() for n, p in encoder.named_parameters() if not n.startswith("embeddings."))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_flops(device: torch.device, dtype: torch.dtype) -> tuple[float, str]:
    """(FLOP/s, where it comes from): the data-sheet bf16 peak of a listed GPU, else a measured matmul."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in GPU_PEAKS.items():
            if key in name and dtype != torch.float32:
                return value, f"data sheet, {name} dense bf16"
    n = 4096 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    best, reps = 0.0, 20 if device.type == "cuda" else 4
    for _ in range(5):  # the best of 5 trials: other jobs on the cores only ever slow a trial down
        sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0))
    return best, f"measured {n}x{n} {dtype} matmul on {device.type} (best of 5 trials)"


def peak_memory(device: torch.device) -> dict[str, float]:
    """CUDA peak allocated, or the process's peak RSS (since `reset_peak_rss`, where it worked)."""
    if device.type == "cuda":
        return {"peak_gpu_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30}
    try:
        with open("/proc/self/status") as f:
            peak_kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_rss_gib": peak_kib / 2**20}


def reset_peak_rss() -> bool:
    """Reset the process's peak RSS to its current RSS (Linux: /proc/self/clear_refs, "5")."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def current_rss_gib() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30
    except OSError:
        return float("nan")


def timed(fn, steps: int, device: torch.device) -> tuple[float, float]:
    """Median (wall, process CPU) seconds of `fn()` over `steps` calls after one warm-up call."""
    fn()
    sync(device)
    wall, cpu = [], []
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        sync(device)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


# -- one measurement (run in a fresh process on CPU, so that its peak RSS is its own) --------------


def measure(a, part: str, implementation: str) -> dict:
    torch.manual_seed(0)
    device = torch.device(a.device)
    dtype = torch.bfloat16 if a.precision == "bf16" else torch.float32

    def amp():
        return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if implementation != "today":  # every case as the commands run it; today's path as the original ran
        keep_freed_memory()
    if part == "evaluation":
        return measure_evaluation(a, implementation, device)
    items = demo_catalogue()
    with tempfile.TemporaryDirectory() as folder:
        config = build_config(a.size, 3000, a.window, max(a.lengths))
        tokenizer = demo_tokenizer(items, folder, config)
    config.vocab_size = len(tokenizer)
    # after ":", variants joined by "+": "one_pass" (pretraining's packed pass), "packed" (packed training
    # batches), "compiled" (torch.compile of the encoder, as --compile does; the warm-up step compiles)
    implementation, _, variant_text = implementation.partition(":")
    variants = set(variant_text.split("+")) - {""}
    config._attn_implementation = "auto" if part == "budget" else implementation
    rng = random.Random(0)
    table = tokenizer.tokenize_items(items)
    item_lengths = [len(ids) for ids, _ in table]
    from recformer.model.item_tokens import TokenizedItems

    catalogue = TokenizedItems.from_lists([table[rng.randrange(len(table))] for _ in range(a.items)])
    result: dict = {"part": part, "implementation": implementation}
    if part in ("items", "budget"):
        model = RecformerForSeqRec(config).to(device).eval()
        batch = a.eager_batch if implementation == "eager" else None
        budget = int(implementation) if part == "budget" else None
        settings = InferenceSettings(device, bf16=dtype == torch.bfloat16, batch_size=batch, max_tokens=budget, progress=False)
        seconds, cpu_seconds = timed(lambda: encode_items(model.longformer, tokenizer, catalogue, settings), a.repeats_inner, device)
        tokens = int(catalogue.lengths().sum()) + len(catalogue)  # + <s>
        flops = 2 * encoder_parameters(model) * tokens
        result.update(items_per_s=len(catalogue) / seconds, seconds=seconds, cpu_seconds=cpu_seconds, real_tokens=tokens)
    else:
        cls = RecformerForSeqRec if part == "finetune" else RecformerForPretraining
        model = cls(config).to(device).train()
        if "one_pass" in variants:
            model.config.pack_sides = True
        if "compiled" in variants:
            model.longformer.compile()
        if part == "finetune":
            model.init_item_embedding(torch.randn(len(catalogue), config.hidden_size))
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        per_length = {}
        lengths = a.lengths if part == "finetune" else [max(a.lengths)]
        for length in lengths:
            seqs = histories(rng, item_lengths, a.batch, max(2, length // 2), length)
            if part == "finetune":
                if "packed" in variants:
                    batch = pack_item_sequences(tokenizer, table, seqs, max(a.lengths), fit_rows=True)  # as the collator
                else:
                    batch = encode_item_sequences(tokenizer, table, seqs)
                batch["labels"] = torch.tensor([rng.randrange(len(catalogue)) for _ in seqs])
                tokens = int(batch["attention_mask"].sum())
                flops = 6 * encoder_parameters(model) * tokens
            else:
                pack = max(a.lengths) if "packed" in variants else None
                batch = PretrainCollator(tokenizer, table, rng=random.Random(0), pack_tokens=pack)([s + [0, 1] for s in seqs])
                packed = batch.get("packed")  # each side's MLM copy is not counted
                tokens = int(packed["attention_mask"].sum()) // 2 if packed else int(batch["attention_mask_a"].sum() + batch["attention_mask_b"].sum())
                masked = len(batch["mlm_positions_a"]) + len(batch["mlm_positions_b"])
                head = 2 * config.hidden_size * (config.hidden_size + config.vocab_size)
                flops = 6 * encoder_parameters(model) * 2 * tokens + 3 * head * masked  # 2: the MLM copies
            batch = {k: to_device(v, device) if isinstance(v, dict) else v.to(device) for k, v in batch.items()}

            def step(batch=batch):
                optimizer.zero_grad(set_to_none=True)
                with amp():
                    out = model(**batch)
                loss = out if part == "finetune" else out.loss
                loss.backward()
                optimizer.step()

            seconds, cpu_seconds = timed(step, a.steps, device)
            per_length[str(length)] = {
                "sequences_per_s": a.batch / seconds, "tokens_per_s": tokens / seconds, "seconds": seconds,
                "cpu_seconds": cpu_seconds,
                "real_tokens": tokens, "flops": flops,
            }  # fmt: skip
        result["per_length"] = per_length
        seconds = sum(r["seconds"] for r in per_length.values())
        result["cpu_seconds"] = sum(r["cpu_seconds"] for r in per_length.values())
        flops = sum(r["flops"] for r in per_length.values())
        tokens = sum(r["real_tokens"] for r in per_length.values())
        result.update(sequences_per_s=a.batch * len(per_length) / seconds, seconds=seconds, real_tokens=tokens)
    result["tokens_per_s"] = result["real_tokens"] / seconds
    result["flops_per_s"] = flops / seconds
    result.update(peak_memory(device))
    return result


def todays_evaluation(model, tokenizer, table, pairs, device, ks) -> dict[str, float]:
    """The evaluation as it was before the fast paths: eager attention, batches of 16 in order of length,
    padded to the longest (and, inside the model, to a multiple of the window)."""
    with torch.no_grad():
        order = sorted(range(len(table)), key=lambda i: -len(table[i][0]))
        vectors = torch.empty(len(table), model.config.hidden_size, dtype=model.dtype)
        for start in range(0, len(order), 16):
            ids = order[start : start + 16]
            batch = encode_item_sequences(tokenizer, table, [[i] for i in ids])
            batch.pop("global_positions")
            vectors[ids] = model.longformer(**to_device(batch, device)).pooler_output.cpu()
        model.init_item_embedding(vectors)
        collator = EvalCollator(tokenizer, table)
        order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]))
        ranks, valid = [], []
        for start in range(0, len(order), 16):
            batch = to_device(collator([pairs[i] for i in order[start : start + 16]]), device)
            batch.pop("global_positions")
            labels = batch.pop("labels")
            scores = model.similarity_score(model.longformer(**batch).pooler_output)
            r, v = compute_ranks(scores, labels)
            ranks.append(r.cpu())
            valid.append(v.cpu())
    return metrics_from_ranks(torch.cat(ranks), torch.cat(valid), ks)


def measure_evaluation(a, path: str, device: torch.device, dtype: torch.dtype = torch.float32) -> dict:
    """A full evaluation of the demo test split at the demo model size: "today[_kept]" or "library" (`dtype`:
    float64 for the equality check, where rounding cannot reorder the near-ties of random weights)."""
    from recformer.data.finetune_reader import load_finetune_data
    from recformer.model.item_tokens import tokenize_catalogue

    torch.manual_seed(0)
    data = load_finetune_data(a.demo_data)
    with tempfile.TemporaryDirectory() as folder:
        config = build_config("demo", 3000, 32, 256)
        tokenizer = demo_tokenizer(list(data.items), folder, config)
    config.vocab_size = len(tokenizer)
    config._attn_implementation = "eager" if path.startswith("today") else "auto"
    model = RecformerForSeqRec(config).to(device, dtype).eval()
    table = tokenize_catalogue(tokenizer, data.items, progress=False)
    pairs = data.test_pairs()[: a.check_users if dtype == torch.float64 else None]
    ks = [10, 50]
    # The evaluation's own high-water mark: the set-up's (tokenizer training, data) is reset first.
    peak_reset = device.type == "cpu" and reset_peak_rss()
    start_rss = current_rss_gib()
    t0, c0 = time.perf_counter(), time.process_time()
    if path.startswith("today"):
        metrics = todays_evaluation(model, tokenizer, table, pairs, device, ks)
    else:
        settings = InferenceSettings(device, max_tokens=a.eval_tokens, progress=False)
        model.init_item_embedding(encode_items(model.longformer, tokenizer, table, settings, dtype=dtype))
        metrics = evaluate(model, pairs, tokenizer, table, settings, ks)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    return {"part": "evaluation", "implementation": path, "seconds": seconds, "cpu_seconds": cpu_seconds, "users": len(pairs),
            "items": data.num_items, "metrics": metrics, **peak_memory(device), "rss_at_start_gib": start_rss,
            "peak_rss_is_the_evaluation_s": peak_reset}  # fmt: skip


# -- driver ----------------------------------------------------------------------------------------


def run_one(a, part: str, implementation: str) -> dict:
    if a.device != "cpu":
        return measure(a, part, implementation)
    argv = [sys.executable, __file__, "--one", part, implementation, *sys.argv[1:]]
    done = subprocess.run(argv, check=True, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarize(part: str, runs: dict[str, list[dict]], peak: float) -> dict:
    keys = [k for k in ("items_per_s", "sequences_per_s", "tokens_per_s", "flops_per_s", "seconds", "cpu_seconds",
                        "peak_gpu_memory_gib", "peak_rss_gib", "rss_at_start_gib")
            if k in next(iter(runs.values()))[0]]  # fmt: skip
    out = {}
    for impl, results in runs.items():
        row = {k: statistics.median(r[k] for r in results) for k in keys}
        if "flops_per_s" in row:
            row["mfu"] = row.pop("flops_per_s") / peak
        if "per_length" in results[0]:
            row["per_length_sequences_per_s"] = {
                length: statistics.median(r["per_length"][length]["sequences_per_s"] for r in results)
                for length in results[0]["per_length"]
            }
            row["per_length_cpu_seconds"] = {
                length: statistics.median(r["per_length"][length]["cpu_seconds"] for r in results)
                for length in results[0]["per_length"]
            }
        if "metrics" in results[0]:
            row["metrics"] = results[0]["metrics"]
        out[impl] = row
    reference = "eager" if "eager" in out else "today" if "today" in out else next(iter(out))
    for impl, row in out.items():
        if impl != reference:
            row["speedup_vs_" + reference] = out[reference]["seconds"] / row["seconds"]
            if "cpu_seconds" in row:  # process CPU time: less sensitive to other jobs on the cores
                row["cpu_time_speedup_vs_" + reference] = out[reference]["cpu_seconds"] / row["cpu_seconds"]
            for length, value in row.get("per_length_sequences_per_s", {}).items():
                row.setdefault("speedup_per_length", {})[length] = value / out[reference]["per_length_sequences_per_s"][length]
                row.setdefault("cpu_time_speedup_per_length", {})[length] = (
                    out[reference]["per_length_cpu_seconds"][length] / row["per_length_cpu_seconds"][length]
                )
    if part == "evaluation":
        out["library"]["speedup_vs_today_kept"] = out["today_kept"]["seconds"] / out["library"]["seconds"]
        out["library"]["cpu_time_speedup_vs_today_kept"] = out["today_kept"]["cpu_seconds"] / out["library"]["cpu_seconds"]
        today, library = out["today"]["metrics"], out["library"]["metrics"]
        out["max_metric_difference_float32"] = max(abs(today[k] - library[k]) for k in today)
    return out


def evaluation_check(a) -> dict:
    """Today's and the library's evaluation of the first `--check_users` users in float64: the same metrics."""
    cpu = torch.device("cpu")
    today = measure_evaluation(a, "today", cpu, torch.float64)["metrics"]
    library = measure_evaluation(a, "library", cpu, torch.float64)["metrics"]
    return {"users": a.check_users, "today": today, "library": library,
            "max_metric_difference": max(abs(today[k] - library[k]) for k in today)}  # fmt: skip


def prepare_demo_data(folder: Path) -> Path:
    """The demo finetuning data processed as `make demo` does it (finetune_data/process.py)."""
    out = folder / "Demo"
    subprocess.run(
        [sys.executable, str(ROOT / "finetune_data/process.py"), "--file_path", str(DEMO_RAW / "finetune/Demo_5.json.gz"),
         "--meta_file_path", str(DEMO_RAW / "finetune/meta_Demo.json.gz"), "--output_path", str(out)],
        check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", nargs="+", choices=["items", "finetune", "pretrain", "budget", "evaluation"],
                   default=["items", "finetune", "pretrain"])  # fmt: skip
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=["bf16", "fp32"], default=None, help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--size", choices=sorted(SIZES), default="base")
    p.add_argument("--window", type=int, default=64)
    p.add_argument("--implementations", nargs="+", default=None,
                   help="default: eager, sdpa, flex_attention (flex trains on CUDA only); the JSON says what auto runs")  # fmt: skip
    p.add_argument("--items", type=int, default=4000)
    p.add_argument("--eager_batch", type=int, default=64, help="today's item-encoding batch (4 x the batch of 16)")
    p.add_argument("--budgets", type=int, nargs="+", default=[4096, 16384, 65536, 262144], help="for --parts budget")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lengths", type=int, nargs="+", default=[1024], help="history lengths (tokens, at most)")
    p.add_argument("--steps", type=int, default=10, help="timed training steps per case (after a warm-up step)")
    p.add_argument("--repeats", type=int, default=3, help="alternating rounds; medians are reported")
    p.add_argument("--repeats_inner", type=int, default=1, help="timed item encodings per case")
    p.add_argument("--threads", type=int, default=2, help="torch threads on CPU")
    p.add_argument("--demo_data", default=None, help="processed demo folder (default: processed now)")
    p.add_argument("--eval_tokens", type=int, default=None, help="token budget of the library's evaluation batches")
    p.add_argument("--check_users", type=int, default=400, help="users of the float64 equality check")
    p.add_argument("--output", type=Path, default=None)
    p.add_argument("--one", nargs=2, default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    a.precision = a.precision or ("bf16" if a.device.startswith("cuda") else "fp32")
    if a.device == "cpu":
        torch.set_num_threads(a.threads)
    torch.set_float32_matmul_precision("high" if a.device.startswith("cuda") else "highest")
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
    with tempfile.TemporaryDirectory() as scratch:
        if "evaluation" in a.parts and a.demo_data is None:
            a.demo_data = str(prepare_demo_data(Path(scratch)))
            sys.argv += ["--demo_data", a.demo_data]
        if a.one is not None:
            print(json.dumps(measure(a, *a.one)))
            return
        device = torch.device(a.device)
        dtype = torch.bfloat16 if a.precision == "bf16" else torch.float32
        peak, peak_source = peak_flops(device, dtype)
        result = {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {a.threads} threads",
            "torch": torch.__version__, "precision": a.precision, "size": a.size, "window": a.window,
            "batch": a.batch, "lengths": a.lengths, "items": a.items, "steps": a.steps, "repeats": a.repeats,
            "peak_flops": peak, "peak_source": peak_source, "load_average_start": os.getloadavg(),
            "auto_runs": {"inference": resolve_attn_implementation("auto", device),
                          "training": resolve_attn_implementation("auto", device, needs_grad=True)},
        }  # fmt: skip
        for part in a.parts:
            if part == "evaluation":
                impls = ["today", "today_kept", "library"]
            elif part == "budget":
                impls = [str(b) for b in a.budgets]
            else:
                impls = a.implementations or ["eager", "sdpa", "flex_attention"]
                if part != "items" and device.type != "cuda":
                    impls = [i for i in impls if i != "flex_attention"]  # no FlexAttention backward on CPU
                if part == "pretrain" and a.implementations is None:
                    impls += ["sdpa:one_pass", "sdpa:packed"]  # both sides in one pass (`pack_sides`); packed batches
                if part == "finetune" and a.implementations is None:  # packed training batches after each
                    impls = [v for i in impls for v in ([i] if i == "eager" else [i, i + ":packed"])]
                if part in ("finetune", "pretrain") and a.implementations is None and device.type == "cuda":
                    impls.append("sdpa:one_pass+compiled" if part == "pretrain" else "sdpa:compiled")  # --compile
            runs: dict[str, list[dict]] = {impl: [] for impl in impls}
            for _ in range(a.repeats):
                for impl in impls:
                    runs[impl].append(run_one(a, part, impl))
                    print(f"{part} {impl}: {runs[impl][-1]['seconds']:.2f} s", file=sys.stderr, flush=True)
                    if part != "evaluation":  # each case as it ends: a run cut short keeps what it measured
                        result[part] = summarize(part, {k: v for k, v in runs.items() if v}, peak)
                        write_result(result, a.output)
            result[part] = summarize(part, runs, peak)
            if part == "evaluation":
                result["evaluation_float64_check"] = evaluation_check(a)
            write_result(result, a.output)
        result["load_average_end"] = os.getloadavg()
    print(write_result(result, a.output))


def write_result(result: dict, output: Path | None) -> str:
    text = json.dumps(result, indent=1)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text + "\n")
    return text


if __name__ == "__main__":
    main()
