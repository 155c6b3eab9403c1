"""References to test and benchmark against, never used by training, evaluation or prediction.

- ``torch_jaanet``: JAA-Net v2 in PyTorch with the release's state_dict keys (torch extra): the benchmark
  baseline (experiments/bench_train.py, bench_predict.py) and the parity reference of tests/test_parity.py.
- ``recipe``: the seeded weights of the parity fixtures (``recipe.json`` -> the six release state_dicts).
- ``step_parity``: one float64 training step against the PyTorch reference step (``algrnet check-step``).

The converter of released weights is ``algrnet_jax.interop.convert``; inference is ``algrnet_jax.inference``.
"""
