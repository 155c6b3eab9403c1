"""algrnet-jax: ALGRNet and JAA-Net for facial action unit recognition in JAX/Flax."""

from algrnet_jax import verbosity as _verbosity
from algrnet_jax import xla_flags as _xla_flags

_xla_flags.apply()        # before JAX creates a backend (see algrnet_jax/xla_flags.py)
_verbosity.install_import_filter()   # TensorFlow's C++ start-up lines only when verbose (see verbosity.py)

__version__ = "0.1.0"
