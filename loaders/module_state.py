"""Book-keeping the pack attaches to a shared torch module (what is merged or swapped into it)."""

from __future__ import annotations

from typing import Callable, TypeVar

import torch

T = TypeVar("T")


def attached(module: torch.nn.Module, name: str, factory: Callable[[], T]) -> T:
    """The object stored on ``module`` under ``name``, created by ``factory`` the first time."""
    state = module.__dict__.get(name)
    if state is None:
        state = factory()
        module.__dict__[name] = state  # a plain attribute: not a parameter, buffer or submodule
    return state
