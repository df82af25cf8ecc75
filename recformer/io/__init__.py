"""Files: atomic writing, output-location checks, content-keyed caches, checkpoint forms and
conversions."""
