"""Import of released PyTorch JAA-Net weights: ``release`` (the release's file layout) and ``convert``
(state_dicts <-> Flax variables, ``convert_release`` writing an inference checkpoint). Test and benchmark
references (the PyTorch baseline, the fixture recipe, the one-step check) live in ``algrnet_jax.reference``."""
