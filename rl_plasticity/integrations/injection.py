"""Plasticity injection (Nikishin et al., NeurIPS 2023, Eq. (1), Figure 2) on a plain PyTorch model.

The core's reset method (core/methods/reset.py, `what: injection`) does the injection: it freezes the old head
h_theta and a copy h_theta'_0 of the freshly initialised one, re-initialises the live head in place, and the
output becomes h_theta(phi(x)) + h_theta'(phi(x)) - h_theta'_0(phi(x)). The core's nets compute the frozen
parts in their own forward; a plain model's forward does not, so this module adds them with hooks:
- `last_layers: 1` (any model whose output layer is an nn.Linear with a bias): the frozen part is one linear
  map (W_old - W_new0) x + (b_old - b_new0) on the output layer's input, added to its output by a forward hook,
  as the core's `Linear.frozen` does;
- `last_layers: k >= 2` (an nn.Sequential, nested ones read as one chain): the head is the chain from the k-th
  last Linear layer to the end; the frozen heads (core/frozen_heads.py) are computed on that layer's input
  (a forward pre-hook keeps it), layer by layer as the chain computes them (Linear, LayerNorm over the units,
  parameter-free activations, Dropout, Identity), and added to the Sequential's output by a forward hook.
  A head may not reach back past a layer it cannot compute (a conv, a BatchNorm, pooling, a Flatten): those
  belong to the encoder, as the ConvNet's convs do in the core.
The frozen parts are tensors of the reset method (saved in `Plasticity.state_dict()`), not of the model; the
hooks are the model's, so `copy.deepcopy(model)` copies them and the copy adds the same frozen parts (the
function it had when copied), and `Plasticity.remove()` takes them away.
CBP and ReDo do not compose with injection here: the core also zeroes a replaced unit's columns in the frozen
weights, which the plain groups do not see; they are refused together at attach time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rl_plasticity.core.frozen_heads import FrozenHeads
from rl_plasticity.core.layers import replica_linear
from rl_plasticity.core.networks import layer_norm
from rl_plasticity.integrations.finder import _flatten_chain, _is_activation

PASSIVE_IN_HEAD = (nn.Dropout, nn.Identity)  # modules a frozen head computes as the live one does


def _copyable(m: nn.Module) -> bool:
    """Whether a frozen head can compute module m with its own copies of m's parameters."""
    if isinstance(m, nn.Linear):
        return m.bias is not None
    if isinstance(m, nn.LayerNorm):
        return len(m.normalized_shape) == 1 and (not m.elementwise_affine or m.bias is not None)
    return isinstance(m, PASSIVE_IN_HEAD) or _is_activation(m)


def _segments(model: nn.Module, units: list) -> list[list[nn.Module]]:
    """Per Linear/Conv layer of the chain: the layer and the modules after it, up to the next one."""
    chain = [m for _, m in _flatten_chain(model, "")]
    at = [chain.index(u.layer) for u in units]
    return [chain[start:end] for start, end in zip(at, [*at[1:], len(chain)])]


def _first_head_layer(segments: list[list[nn.Module]]) -> int:
    """The first layer a frozen head may start at: every module from it to the chain's end is copyable."""
    first = len(segments)
    while first > 0 and all(map(_copyable, segments[first - 1])):
        first -= 1
    return first


def injection_problem(model: nn.Module, layers, last_layers: int) -> str | None:
    """Why `reset what=injection` with `last_layers` cannot act on this model, or None."""
    out = layers.head.layer if layers.head is not None else None
    if not isinstance(out, nn.Linear) or out.bias is None:
        what = "no Linear/Conv layer" if out is None else f"a {type(out).__name__} output layer" + (
            " without a bias" if isinstance(out, nn.Linear) else "")
        return f"{type(model).__name__} has {what}, and injection needs an nn.Linear output layer with a bias"
    if last_layers == 1:
        return None
    if not isinstance(model, nn.Sequential):
        return (f"with last_layers={last_layers} the frozen heads are computed on the input of the head's first "
                f"layer and added to the model's output, which needs an nn.Sequential, not a "
                f"{type(model).__name__}; use last_layers=1 (the output layer) for any model")
    chain = {id(m) for _, m in _flatten_chain(model, "")}
    hidden = [type(u.layer).__name__ for u in layers.layers if id(u.layer) not in chain]
    if hidden:
        return (f"with last_layers={last_layers} the head must be a chain of the Sequential's own modules, and "
                f"its {hidden[0]} layer is inside another module")
    segments = _segments(model, layers.layers)
    reach = len(segments) - _first_head_layer(segments)
    if last_layers > reach:
        blocker = next((m for seg in segments[:len(segments) - reach][::-1] for m in seg[::-1]
                        if not _copyable(m)), None)
        why = "" if blocker is None else (f"; a frozen head computes Linear layers with biases, LayerNorm, "
                                          f"activations and dropout, and the {type(blocker).__name__} before them "
                                          "belongs to the encoder (conv layers cannot be in the head)")
        return f"last_layers ({last_layers}) exceeds the {reach} last layers of the model a head can span{why}"
    return None


def inject_into_output_layer(layers, handles: list) -> None:
    """`last_layers: 1`: the output layer's frozen linear map, added to its output (`layers.head.frozen`)."""
    head = layers.head

    def add_frozen(module, inputs, out):
        frozen = head.frozen
        return out if frozen is None else out + F.linear(inputs[0], frozen[0][0], frozen[1][0])
    handles.append(head.layer.register_forward_hook(add_frozen))


class SequentialHeads(FrozenHeads):
    """An nn.Sequential as a net that keeps injection's frozen heads: its Linear/Conv layers (as the model's
    ModelLayers sees them) are `layers`; frozen heads may start at any of the last ones that the chain after
    them lets a head compute (`injection_problem` refuses the others at attach time)."""

    def __init__(self, model: nn.Sequential, layers, handles: list):
        self.layers, self.head, self._model_layers = layers.layers, layers.head, layers
        self.segments = _segments(model, self.layers)
        self.first_head_layer = _first_head_layer(self.segments)
        self._inputs: dict[int, torch.Tensor] = {}
        self.set_frozen_heads([])
        for i, unit in enumerate(self.layers):
            handles.append(unit.layer.register_forward_pre_hook(self._keeper(i)))
        handles.append(model.register_forward_hook(self._add_heads))

    def modules(self) -> list:
        return self._model_layers.modules()

    def reset_parameters(self, generators) -> None:
        self._model_layers.reset_parameters(generators)

    def _keeper(self, i: int):
        def keep(module, inputs):
            if i in self.frozen_starts():
                self._inputs[i] = inputs[0]
        return keep

    def _add_heads(self, module, inputs, out):
        if not self.head_stacks:
            return out
        flat = {s: x.reshape(-1, x.shape[-1]) for s, x in self._inputs.items()}
        self._inputs = {}
        return self.add_frozen_heads(out.reshape(-1, out.shape[-1]), flat).reshape(out.shape)

    def layer_parameters(self, i: int) -> list[torch.Tensor]:
        """Layer i's weight and bias, then those of the LayerNorms after it (replica axis of 1: views)."""
        norms = [m for m in self.segments[i][1:] if isinstance(m, nn.LayerNorm) and m.elementwise_affine]
        return [self.layers[i].weight, self.layers[i].bias] + [t.unsqueeze(0) for n in norms
                                                                for t in (n.weight, n.bias)]

    def frozen_layer(self, i: int, x: torch.Tensor, tensors: list[torch.Tensor]) -> torch.Tensor:
        x = replica_linear(x, tensors[0], tensors[1])
        rest = iter(tensors[2:])
        for m in self.segments[i][1:]:
            if isinstance(m, nn.LayerNorm):
                x = layer_norm(x, next(rest), next(rest), m.eps) if m.elementwise_affine else \
                    F.layer_norm(x, m.normalized_shape, eps=m.eps)
            else:
                x = m(x)
        return x
