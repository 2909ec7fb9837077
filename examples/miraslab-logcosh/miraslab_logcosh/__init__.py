"""miraslab-logcosh: two memory parts core miraslab does not have, written against miraslab.api only.

* ``bias = { name = "logcosh", sharpness = a }``: l(M; k, v) = sum_c log cosh(a e_c) / a^2 with
  e = M(k) - v; quadratic (l2/2) for |a e| << 1, linear (|e| / a) beyond, so outliers are
  bounded without Huber's threshold.
* ``memory = "ttt_ln"``: TTT-Linear's inner model without its bias, M(x) = x + LN(W x), with a
  per-head LayerNorm gain and shift of its own (outer parameters, exempt from weight decay).
* ``memory = "ttt_linear"``: TTT-Linear's inner model with its bias, M(x) = x + LN(W x + b): a rule
  core miraslab lacks, its inner bias b learned at test time beside W (``make_init(..., bias=True)``).
"""
