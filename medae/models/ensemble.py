"""An ensemble of one architecture trained from several seeds (``train.ensemble: K``).

Its reconstruction is the mean of the members' reconstructions, so the heat map is the residual
against the members' consensus of healthy appearance: errors that one member makes alone are
averaged away, and the map moves less from seed to seed (nnU-Net ensembles its folds the same
way).  The latent code is the first member's (the members' codes live in different spaces).

Built by training, never named in a recipe: ``create_model("ensemble", member=..., size=K)``
rebuilds a saved one (the bundle records ``member``, the members' own ``model`` section).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from medae.models.ae import AEOutput
from medae.models.registry import create_model, register_model

#: the registry name; recipes cannot name it (``model.name``), training builds it
NAME = "ensemble"
MAX_MEMBERS = 16


class Ensemble(nn.Module):
    """K networks of one architecture; ``forward`` averages their reconstructions."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        first = members[0]
        self.family = getattr(first, "family", "ae")
        self.spatial_dims = first.spatial_dims

    def forward(self, x: torch.Tensor) -> AEOutput:
        outs = [m(x) for m in self.members]
        recon = torch.stack([o.recon.float() for o in outs]).mean(0)
        first = outs[0]
        return AEOutput(recon=recon, z=first.z, mu=first.mu, logvar=first.logvar)


@register_model(NAME, listed=False)
def ensemble(*, member: dict, size: int = 2) -> Ensemble:
    """``size`` copies of the architecture ``member`` (a model configuration with its name)."""
    if not isinstance(member, dict) or not isinstance(member.get("name"), str):
        raise ValueError("member: a model configuration with its name")
    if member["name"] == NAME:
        raise ValueError("member: an ensemble cannot hold ensembles")
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_MEMBERS:
        raise ValueError(f"size: an integer from 1 to {MAX_MEMBERS}, got {size!r}")
    return Ensemble([create_model(**member) for _ in range(size)])


def input_config(model: nn.Module) -> dict[str, Any]:
    """The configuration that fixes the input (``in_shape``...): an ensemble's members'."""
    cfg = dict(getattr(model, "config", None) or {})
    return dict(cfg["member"]) if cfg.get("name") == NAME else cfg
