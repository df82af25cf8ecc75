"""Data: raw Amazon 2018 files (or RecBole / CSV tables) in, processed folders out, and their readers.

Nothing here imports torch or transformers (`finetune_reader.popularity_scores` imports torch when called).

* `amazon`: the streaming reader of the raw review and meta files (gzip or plain, JSON or Python literals);
* `tables`: the readers of RecBole atomic files and CSV/TSV/JSON-lines tables (interactions, item texts);
* `formats`: the processed folders' file names and JSON shapes, shared by the writers and the readers, and
  how a step writes its folder (`StepOutput`: staged files, in-progress marker, manifest) and a reader checks it;
* `finetune_writer` / `finetune_reader`: one category (or one pair of tables) -> the finetuning folder ->
  `FinetuneData`;
* `pretrain_writer` / `pretrain_reader`: several categories -> the pretraining corpus -> its sequences;
* `cli`: what the processing commands print around their step.
"""
