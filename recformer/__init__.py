"""Recformer: text-only sequential recommendation with a Longformer-derived encoder."""
