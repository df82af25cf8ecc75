"""Inference: item tables, full-ranking evaluation, chunked top-k, and the Recommender with its
saved index."""
