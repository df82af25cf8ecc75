"""The model: configuration, the encoder and its heads, attention kernels, packed rows, the tokenizer
and the one rule that lays items and histories out as tokens."""
