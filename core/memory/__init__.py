"""The memory engine, in three folders that answer three questions.

``rule/`` — what a plugin implements: the four Miras axes and the features map
  (``axes.py``), the rule that joins them and differentiates the inner loss
  (``memory_rule.py``), the state carried between calls (``state.py``), and building a
  rule from the memory's spec, with the spec's checks (``build.py``).
``paths/`` — how a rule runs: ``memory_op.py`` is the entry point; ``recurrent.py`` is
  the token-by-token oracle and decoding path; ``chunked.py`` is training, with its
  variants ``chunked_affine.py`` (matrix memories: whole chunks in one batched pass),
  ``chunked_channelwise.py`` (channel-wise decays, in sub-chunks) and
  ``chunked_per_token.py`` (per-token inner steps, DeltaNet / Gated DeltaNet, through the
  UT / WY form); ``coefficients.py`` holds the dual form's decay/momentum coefficients,
  ``omega_window.py`` the Omega rule's sliding window of gradient sources, ``chunk_end.py``
  the non-linear chunk-end steps (Newton–Schulz, soft-thresholding, ...), ``compiled.py``
  the chunk step under ``torch.compile``, ``op_inputs.py`` the op's argument checks.
``kernels/`` — why it is fast: each hand-written autograd Function, its docstring naming
  the plain-PyTorch expression it equals (and the tests that hold it to it).

The modules at this level build the layer around the op: ``spec.py`` (the recipe tables
``[model.memory]`` and ``[model.tnt]``, which every builder takes whole), ``layer.py``
(``MemoryLayer``: projections, heads, the decode state), ``neural_memory.py`` (one memory
over given q, k, v), ``hierarchical_memory.py`` (TNT: a global memory plus local memories
reset every shard), ``qkv_projections.py``, ``gate_projections.py``, ``qk_projection.py``
and ``knockout.py`` (knocking the memory out at evaluation: reset every chunk or shard, or
a zeroed read).  Plugins import none of these: they import :mod:`miraslab.api`.
"""
