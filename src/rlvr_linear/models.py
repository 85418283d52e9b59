"""Models: ``load_model`` (:mod:`rlvr_linear.loading`) and the tiny / SmolLM2 base models
(:mod:`rlvr_linear.base_model`), re-exported here so ``from rlvr_linear.models import ...`` keeps working."""

from .base_model import (
    ASSETS,
    BASE_PRESETS,
    SHIPPED_MANIFEST,
    SMOLLM2_GGUF,
    TinyBaseConfig,
    build_tiny_base,
    build_tiny_model,
    cache_root,
    convert_smollm2,
    ensure_base,
    file_sha256,
    install_shipped_base,
    recipe_key,
    sft_batch,
    ship_base,
    shipped_bases,
    smollm2_gguf_dir,
    verify_base_dir,
)
from .loading import load_from_shards, load_model

__all__ = [
    "ASSETS",
    "BASE_PRESETS",
    "SHIPPED_MANIFEST",
    "SMOLLM2_GGUF",
    "TinyBaseConfig",
    "build_tiny_base",
    "build_tiny_model",
    "cache_root",
    "convert_smollm2",
    "ensure_base",
    "file_sha256",
    "install_shipped_base",
    "load_from_shards",
    "load_model",
    "recipe_key",
    "sft_batch",
    "ship_base",
    "shipped_bases",
    "smollm2_gguf_dir",
    "verify_base_dir",
]
