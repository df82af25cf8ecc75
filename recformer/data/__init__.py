"""Data: raw Amazon 2018 files in, processed folders out, and the readers of those folders.

Nothing here imports torch or transformers (`finetune_reader.popularity_scores` imports torch when called).

* `amazon`: the streaming reader of the raw review and meta files (gzip or plain, JSON or Python literals);
* `formats`: the processed folders' file names and JSON shapes, shared by the writers and the readers, and
  how a step writes its folder (`StepOutput`: staged files, in-progress marker, manifest) and a reader checks it;
* `finetune_writer` / `finetune_reader`: one category -> the finetuning folder -> `FinetuneData`;
* `pretrain_writer` / `pretrain_reader`: several categories -> the pretraining corpus -> its sequences;
* `cli`: what the processing commands print around their step.
"""
