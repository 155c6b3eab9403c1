"""algrnet-jax: ALGRNet and JAA-Net for facial action unit recognition in JAX/Flax."""

__version__ = "0.1.0"
