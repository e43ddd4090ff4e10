"""``frontend.F``: the functional namespace. Names and arguments follow ``torch.nn.functional``
and ``torch``; each function adds IR nodes to the current trace (or, outside a trace, runs at
once: eager.py).

This module only gathers the functions of the modules that define them; it defines nothing. The
modules form layers: functional_core (one function per core op) <- compositions,
functional_loss, functional_distance, functional_conv <- functional_pool, functional_random,
functional_index <- functional_norm, functional_shape, functional_tensor; tensor_methods
attaches the ``Tensor`` operators and methods (imported here, so any use of ``F`` has them).
"""
# ruff: noqa: F401  (a namespace: every import is a re-export)
from . import tensor_methods  # (attaches Tensor's operators and methods)

# core ops: arithmetic, comparisons, reductions, shapes, basic indexing, softmax
from .functional_core import (abs, add, amax, amin, argmax, argmin, as_tensor, broadcast_to, cast,
                              cat, clamp, clamp_max, clamp_min, clip, clone, concat, concatenate,
                              cos, div, eq, erf, exp, flatten, floor_divide, fmod, ge, gt, le,
                              linear, log, log_softmax, logical_and, logical_or, logsumexp, lt,
                              matmul, max, maximum, mean, min, minimum, MinMax, mul, ne, neg, pad,
                              permute, pow, relu, remainder, reshape, result_dtype, rsqrt, setitem,
                              sigmoid, sign, sin, slice_axes, softmax, sqrt, square, squeeze,
                              stack, std, sub, sum, tanh, transpose, unsqueeze, var, where)

# activations composed of core ops
from .compositions import (celu, elu, expm1, gelu, glu, hardshrink, hardsigmoid, hardswish,
                           hardtanh, leaky_relu, log1p, logsigmoid, mish, prelu, relu6, rrelu,
                           selu, silu, softmin, softplus, softshrink, softsign, tanhshrink,
                           threshold)

# losses
from .functional_loss import (binary_cross_entropy, binary_cross_entropy_with_logits,
                              cosine_embedding_loss, cross_entropy, gaussian_nll_loss,
                              hinge_embedding_loss, huber_loss, kl_div, l1_loss,
                              margin_ranking_loss, mse_loss, multi_margin_loss,
                              multilabel_soft_margin_loss, nll_loss, poisson_nll_loss,
                              smooth_l1_loss, soft_margin_loss, triplet_margin_loss)

# norms and distances
from .functional_distance import cosine_similarity, normalize, pairwise_distance, vector_norm

# convolution (chapter 9)
from .functional_conv import (conv, conv1d, conv2d, conv3d, conv_fft, conv_separable,
                              conv_transpose, conv_transpose1d, conv_transpose2d, conv_transpose3d,
                              fold, locally_connected, tiled_conv, unfold)

# pooling and batch normalization (chapter 9, section 8.7.1)
from .functional_pool import (adaptive_avg_pool1d, adaptive_avg_pool2d, adaptive_avg_pool3d,
                              adaptive_max_pool1d, adaptive_max_pool2d, adaptive_max_pool3d,
                              avg_pool1d, avg_pool2d, avg_pool3d, batch_norm, global_avg_pool,
                              lp_pool1d, lp_pool2d, lp_pool3d, max_pool1d, max_pool2d, max_pool3d,
                              maxout)

# random numbers and dropout
from .functional_random import (bernoulli, dropout, rand, rand_like, randint, randn,
                                randn_like, random_bits)

# indexing by integer tensors (x[idx]), gather, embeddings
from .functional_index import (embedding, gather, getitem, index_add, index_select, masked_select,
                               nonzero, scatter_add,
                               take_along_dim)

# normalization layers and attention
from .functional_norm import (group_norm, instance_norm, layer_norm, rms_norm,
                              scaled_dot_product_attention)

# resampling and rearranging: interpolate, pixel and channel shuffles, one-hot, channel dropout
from .functional_shape import (channel_shuffle, dropout1d, dropout2d, dropout3d, interpolate,
                               one_hot, pixel_shuffle, pixel_unshuffle, upsample,
                               upsample_bilinear, upsample_nearest)

# tensor functions composed of core ops: split/chunk, flip/roll, repeat, masks and triangles,
# scans and products, tests, rounding, logical and bitwise operators, einsum, factories
from .functional_tensor import (all, any, arange, bitwise_and, bitwise_not, bitwise_or,
                                bitwise_xor, ceil, chunk, cumprod, cumsum, detach, einsum,
                                empty, empty_like, eye, flip, fliplr, flipud, floor, frac, full,
                                full_like, isfinite, isinf, isnan, linspace, logical_not,
                                logical_xor, masked_fill, movedim, nan_to_num, narrow, norm,
                                ones, ones_like, prod, repeat, repeat_interleave, roll, round,
                                scatter, scatter_reduce, split, tile, tril, triu, trunc, unbind,
                                unflatten, zeros, zeros_like, sort, argsort, topk, msort,
                                kthvalue)

from .tracing import Tensor  # (the type of what every function returns)

# torch's tensor functions composed of the above: products, elementwise functions,
# diagonals, cdist, moments, cummax/cummin, logcumsumexp, median, rot90, tensor_split
from .functional_math import (addcdiv, addcmul, addmm, addmv, baddbmm, bmm, cdist, cosh,
                              count_nonzero, cross, cummax, cummin, deg2rad, diag, diag_embed,
                              diagonal, dot, exp2, hypot, inner, lerp, log10, log2, nanmean,
                              nansum,
                              logaddexp, logaddexp2, logcumsumexp, logit, median, mm, mv,
                              outer, rad2deg, reciprocal, rot90, sinc, sinh, std_mean, tan,
                              tensor_split, tensordot, trace, var_mean, xlogy, isclose,
                              allclose, isneginf, isposinf, fmax, fmin, true_divide, erfc, diff,
                              kron, meshgrid, cartesian_prod, swapaxes, swapdims, hstack, vstack,
                              dstack, searchsorted, bucketize)

# connectionist temporal classification
from .functional_ctc import ctc_loss

# composed of the above: local response norm, max unpooling, the bilinear form, pdist
from .functional_more import (bilinear, embedding_bag, local_response_norm,
                              max_pool1d_with_indices,
                              max_pool2d_with_indices, max_pool3d_with_indices, max_unpool1d,
                              max_unpool2d, max_unpool3d, pdist)
