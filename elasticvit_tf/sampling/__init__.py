"""Subnet sampling for supernet training (docs/method.md#samplers).

``samplers`` (the common API and the baselines), ``level_samplers`` (complexity-aware,
performance-aware, ElasticViT), ``level_tables`` (FLOPs-level tables) and ``registry``
(``make_sampler`` by name). ``model_dir.read_sampler_state`` reads a saved state back.
"""
