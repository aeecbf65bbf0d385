"""An exponential moving average of the weights (``--ema DECAY``): validated, and published as last/best.safetensors.

The raw weights keep training (and are what a resume continues from); the average smooths the step-to-step noise
that makes a single epoch's weights a lottery on unseen noise. Early on the decay ramps as (1 + n) / (10 + n) after
n updates, so the average is not anchored to the initial weights for thousands of steps. A P-vs-U warm start
(--pvu-steps before nnPU/uPU) is left out: the average starts over when it ends (trainer.loop).
"""

from __future__ import annotations

import copy

import torch


class WeightAverage:
    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.params = [p.detach().clone() for p in model.parameters()]
        self.updates = 0

    @torch.no_grad()
    def restart(self, model: torch.nn.Module) -> None:
        """Start over from ``model``'s weights, the ramp too (the end of a P-vs-U warm start)."""
        for avg, p in zip(self.params, model.parameters(), strict=True):
            avg.copy_(p.detach())
        self.updates = 0

    def rate(self) -> float:
        """The decay of the next update."""
        n = self.updates + 1
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        weight = 1.0 - self.rate()
        for avg, p in zip(self.params, model.parameters(), strict=True):
            avg.lerp_(p.detach(), weight)
        self.updates += 1

    @torch.no_grad()
    def averaged(self, model: torch.nn.Module) -> torch.nn.Module:
        """A copy of ``model`` holding the average (buffers and config are the model's)."""
        out = copy.deepcopy(model)
        for p, avg in zip(out.parameters(), self.params, strict=True):
            p.copy_(avg)
        return out

    def state_dict(self) -> dict:
        return {"params": [p.clone() for p in self.params], "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        if len(state["params"]) != len(self.params):
            raise ValueError("the saved weight average does not match the model")
        for avg, saved in zip(self.params, state["params"], strict=True):
            avg.copy_(saved)
        self.updates = int(state["updates"])
