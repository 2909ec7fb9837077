"""The memory engine, in three folders that answer three questions.

``rule/`` — what a plugin implements: the four Miras axes and the features map
  (``axes.py``), the rule that joins them and differentiates the inner loss
  (``memory_rule.py``), the state carried between calls (``state.py``), and building a
  rule from recipe components (``build.py``).
``paths/`` — how a rule runs: ``memory_op.py`` is the entry point; ``recurrent.py`` is
  the token-by-token oracle and decoding path; ``chunked.py`` is training, with its
  variants ``chunked_affine.py`` (matrix memories: whole chunks in one batched pass) and
  ``chunked_channelwise.py`` (channel-wise decays, in sub-chunks); ``coefficients.py``
  holds the dual form's decay/momentum coefficients, ``omega_window.py`` the Omega rule's
  sliding window of gradient sources, ``chunk_end.py`` the non-linear chunk-end steps
  (Newton–Schulz, soft-thresholding, ...), ``compiled.py`` the chunk step under
  ``torch.compile``.
``kernels/`` — why it is fast: each hand-written autograd Function, its docstring naming
  the plain-PyTorch expression it equals (and the tests that hold it to it).

The modules at this level build the layer around the op: ``spec.py`` (the recipe
table), ``layer.py`` (``MemoryLayer``: projections, heads, the decode state),
``neural_memory.py`` (one memory over given q, k, v), ``qkv_projections.py``,
``gate_projections.py``, ``qk_projection.py`` and ``ablation.py`` (reset/zero the memory
at evaluation).  Plugins import none of these: they import :mod:`miraslab.api`.
"""
