"""PaLM (Chowdhery et al. 2022, arXiv 2204.02311) in JAX/Flax: pure model code, no Ray."""
