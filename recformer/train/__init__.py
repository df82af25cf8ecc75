"""Training: the finetuning loop, pretraining (Lightning + DeepSpeed), collators, optimizer groups, the
resume state and the run log."""
