"""Which calls of a network are activations: the functional table (``F.relu``, ``torch.relu_``, ``F.gelu``, ...)
and the module classes (``nn.ReLU``, ``nn.GELU``, ...).

Two readers: the projection rules (``zf.projection.rules``), which swap a method's backward rule in at every
activation, and the receptive-field measurement (``zf.net.receptive``), which replaces every activation by the
identity.  An activation here is a pointwise nonlinearity on the signal's path; gates that multiply a signal
(sigmoid / hardsigmoid in squeeze-excitation blocks) are not in the tables.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: func -> (kind, number of positional arguments before ``inplace``); kind is ``relu``, ``relu6`` (F.relu6),
#: ``hardtanh`` (a rectifier only when its lower bound is 0) or ``act`` (any other activation)
ACTIVATIONS = {F.relu: ("relu", 1), torch.relu: ("relu", 1), torch.relu_: ("relu", 1), torch.Tensor.relu: ("relu", 1),
               torch.Tensor.relu_: ("relu", 1), F.relu_: ("relu", 1), F.relu6: ("relu6", 1),
               F.hardtanh: ("hardtanh", 3), F.leaky_relu: ("act", 2), F.prelu: ("act", 2), F.elu: ("act", 2),
               F.selu: ("act", 1), F.celu: ("act", 2), F.gelu: ("act", 1), F.silu: ("act", 1),
               F.hardswish: ("act", 1), F.mish: ("act", 1)}

#: in-place or method forms of the ReLU -> the out-of-place function that computes the same value
OUT_OF_PLACE = {torch.relu_: torch.relu, torch.Tensor.relu_: torch.relu, F.relu_: torch.relu,
                torch.Tensor.relu: torch.relu}

#: activation modules (the receptive-field copy replaces them by the identity)
ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
                      nn.Hardswish, nn.Mish, nn.Hardtanh)

#: functional max pools (the receptive-field measurement runs them as average pools of the same windows)
MAX_POOLS = (F.max_pool2d, torch.max_pool2d, F.adaptive_max_pool2d)

__all__ = ["ACTIVATIONS", "OUT_OF_PLACE", "ACTIVATION_MODULES", "MAX_POOLS"]
