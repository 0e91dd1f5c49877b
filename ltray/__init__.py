"""ltray: Ray-based self-supervised learning on long-tailed data.

The package is built in layers whose imports only point down (cli, cluster, pools, tracking, evaluate, train,
methods, ... down to config and errors): see docs/architecture.md; tests/test_layers.py enforces the order.
"""

__version__ = "0.1.0"
