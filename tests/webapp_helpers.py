"""Helpers shared by the web tests: random soft prompts for the embedded model, and a service using them."""

from __future__ import annotations

from pathlib import Path

import torch

from future_lens.lens.models import LoadedModel
from future_lens.lens.prompts import save_soft_prompt
from future_lens.service import LensService

PROMPT_LAYERS = (0, 15, 29)


def random_prompt_dir(directory: Path, model: LoadedModel, seed: int = 0, layers=PROMPT_LAYERS) -> Path:
    """Write untrained (random) 10-vector prompts for `layers`: enough to exercise the future lens end to end."""
    generator = torch.Generator().manual_seed(seed)
    for layer in layers:
        prompt = torch.randn(10, model.adapter.d_model, generator=generator) * 0.5
        save_soft_prompt(directory, model, layer, prompt, {"trained_on_n": 1, "examples": 0, "seed": seed})
    return directory


def service_with_prompts(directory: Path, model: LoadedModel, seed: int = 0) -> LensService:
    return LensService(model, prompt_dir=random_prompt_dir(directory, model, seed))
