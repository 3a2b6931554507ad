"""rl-plasticity: study and cure loss of plasticity in deep RL and continual learning."""

__version__ = "0.1.0"
