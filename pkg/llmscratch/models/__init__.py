"""The models of the course, one file each: ``seq2seq``, ``attention``, ``gpt`` (later ``bert``, ``vit``).

Blocks shared between models (LayerNorm, GELU, feed-forward, positional encodings) live in ``layers`` and
``positional`` and are imported, never copied.
"""
