"""Attention backends: how softmax attention is computed (sdpa, flex, xformers).

Each one computes :func:`miraslab.model.attention_backend.reference_attention` under the
same visibility rule (causal, sliding window, position-free persistent and prefix tokens).
"""
