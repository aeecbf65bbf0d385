"""Start a deeper preset from a trained smaller one without changing what it computes (Net2Net-style).

``blocks2`` is a prefix of ``blocks3`` and ``blocks3`` of ``paper`` and ``blocks3t`` (same layer shapes) up to the
final 1×1 layer.
The shared layers are copied; each added hidden layer passes the old features through unchanged on its first c
channels (an identity kernel at the tap for "this frame"; ReLU of features that are already ≥ 0 is a no-op) and
starts its other channels as initialised; the new output layer reads the old output layer's weights from those
c channels and zero from the new ones. So the grown net gives the same logits as the small one at step 0 (given
the same lookahead and level window; with dropout > 0 the added layers also drop the carried features in
training), and training only has to find what the added capacity is good for.
"""

from __future__ import annotations

import torch

from rtpulse.errors import RtpulseError
from rtpulse.model import PulseCNN


def grow_into(small: PulseCNN, big: PulseCNN) -> None:
    """Overwrite ``big``'s weights so that it computes ``small``'s logits (in place, under no_grad)."""
    old, new = small.convs, big.convs
    shared = len(old) - 1
    c = old[-1].in_channels
    shapes_ok = len(new) > len(old) and all(
        o.weight.shape == n.weight.shape and o.dilation == n.dilation
        for o, n in zip(list(old)[:shared], list(new)[:shared])
    )
    added = list(new)[shared:-1]
    if not shapes_ok or any(m.in_channels < c or m.out_channels < c for m in added) or new[-1].in_channels < c:
        why = ("a model only grows into a bigger preset (blocks2 < blocks3 < paper or blocks3t); give --preset "
               f"{small.config.preset} or bigger" if len(new) <= len(old) else
               "its hidden layers must be the first layers of the bigger preset")
        raise RtpulseError(f"cannot grow a {small.config.preset!r} model into {big.config.preset!r}: {why}")
    if old[-1].out_channels != new[-1].out_channels:
        raise RtpulseError("cannot grow a model into one with a different number of outputs")
    with torch.no_grad():
        for o, n in zip(list(old)[:shared], list(new)[:shared]):
            n.weight.copy_(o.weight)
            n.bias.copy_(o.bias)
        for i, conv in enumerate(added, start=shared):
            past, _ = big.time_pads[i]
            kf, _kt = conv.kernel_size
            conv.weight[:c].zero_()
            conv.bias[:c].zero_()
            idx = torch.arange(c)
            # tap past/d of a kernel padded (past, future), time dilation d, is frame t
            conv.weight[idx, idx, kf // 2, past // conv.dilation[1]] = 1.0
        last = new[-1]
        last.weight.zero_()
        last.weight[:, :c].copy_(old[-1].weight)
        last.bias.copy_(old[-1].bias)


def widen_inputs(small: PulseCNN, big: PulseCNN) -> None:
    """Copy ``small`` into ``big`` (same preset, more input channels), the added inputs' weights zero: the same
    logits at step 0 (e.g. adding the noise-floor or frequency channels to a trained model). Inputs are matched
    by name (ModelConfig.input_names), so a frequency-input model can still gain the floor inputs."""
    old_names, new_names = small.config.input_names, big.config.input_names
    missing = [n for n in old_names if n not in new_names]
    if missing:
        raise RtpulseError(f"cannot drop inputs a trained model reads: {', '.join(missing)}")
    with torch.no_grad():
        for o, n in zip(small.convs, big.convs):
            if o.weight.shape == n.weight.shape:
                n.weight.copy_(o.weight)
            else:
                n.weight.zero_()
                for i, name in enumerate(old_names):
                    n.weight[:, new_names.index(name)].copy_(o.weight[:, i])
            n.bias.copy_(o.bias)
