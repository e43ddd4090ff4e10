"""``frontend.nn``: modules with registered, named parameters, as in ``torch.nn``.

This module only gathers the classes of the modules that define them; it defines nothing.
module.py is the base (``Parameter``, ``Module``, containers) that every layer module builds on;
no layer module imports this one.
"""
# ruff: noqa: F401  (a namespace: every import is a re-export)

# the base: Parameter, Module and the containers
from .module import (Module, ModuleDict, ModuleList, Parameter, ParameterDict, ParameterList,
                     Sequential)

# Linear, basic activations, softmax and the core losses
from .layers_basic import (CrossEntropyLoss, Flatten, Identity, Linear, LogSoftmax, MSELoss,
                           NLLLoss, ReLU, Sigmoid, Softmax, Tanh, Unflatten)

# convolution, pooling, batch-norm, dropout and embedding layers of chapter 9 and section 8.7.1
from .layers import (AdaptiveAvgPool1d, AdaptiveAvgPool2d, AdaptiveAvgPool3d, AdaptiveMaxPool1d,
                     AdaptiveMaxPool2d, AdaptiveMaxPool3d, AvgPool1d, AvgPool2d, AvgPool3d,
                     BatchNorm1d, BatchNorm2d, BatchNorm3d, Conv1d, Conv2d, Conv3d,
                     ConvTranspose1d, ConvTranspose2d, ConvTranspose3d, Dropout, Embedding,
                     EmbeddingBag,
                     GlobalAvgPool, LocallyConnected1d, LocallyConnected2d, LPPool1d, LPPool2d,
                     LPPool3d, Maxout, MaxPool1d, MaxPool2d, MaxPool3d, TiledConv2d)

# activations and losses composed of core ops
from .composite_modules import (BCELoss, BCEWithLogitsLoss, CELU, ChannelShuffle, CTCLoss,
                                CircularPad1d,
                                CircularPad2d, CircularPad3d, ConstantPad1d, ConstantPad2d,
                                ConstantPad3d, CosineEmbeddingLoss, CosineSimilarity, Dropout1d,
                                Dropout2d, Dropout3d, ELU, Fold, GaussianNLLLoss, GELU, GLU,
                                Hardshrink, Hardsigmoid, Hardswish, Hardtanh,
                                HingeEmbeddingLoss, HuberLoss, KLDivLoss, L1Loss, LeakyReLU,
                                LogSigmoid, MarginRankingLoss, Mish, MultiLabelSoftMarginLoss,
                                MultiMarginLoss, PairwiseDistance, PixelShuffle, PixelUnshuffle,
                                PoissonNLLLoss, PReLU, ReflectionPad1d, ReflectionPad2d,
                                ReflectionPad3d, ReLU6, ReplicationPad1d, ReplicationPad2d,
                                ReplicationPad3d, RReLU, SELU, SiLU, SmoothL1Loss, Softmax2d,
                                Softmin, Softplus, Softshrink, Softsign, SoftMarginLoss,
                                Tanhshrink, Threshold, TripletMarginLoss, Unfold, Upsample,
                                UpsamplingBilinear2d, UpsamplingNearest2d, ZeroPad1d,
                                ZeroPad2d, ZeroPad3d, LocalResponseNorm, MaxUnpool1d,
                                MaxUnpool2d, MaxUnpool3d, Bilinear)

# normalization layers
from .layers_norm import (GroupNorm, InstanceNorm1d, InstanceNorm2d, InstanceNorm3d, LayerNorm,
                          RMSNorm)

# attention and transformer layers
from .attention import (MultiheadAttention, NonDynamicallyQuantizableLinear, Transformer,
                        TransformerDecoder, TransformerDecoderLayer, TransformerEncoder,
                        TransformerEncoderLayer)

# recurrent layers and the networks of chapter 10
from .rnn import (OutputRecurrentNet, RecurrentConvNet, RNN, RNNLanguageModel, RNNSequenceModel,
                  SequenceClassifier)

# gated recurrent layers
from .rnn_gated import GRU, GRUCell, LSTM, LSTMCell, RNNCell

# host-side utilities: gradient clipping, parameter vectors, padding sequences
from . import nn_utils as utils
