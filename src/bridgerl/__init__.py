"""bridgerl: cooperative SFT and RL (BRIDGE, arXiv 2509.06948) with every baseline on one loop."""

__version__ = "0.1.0"
