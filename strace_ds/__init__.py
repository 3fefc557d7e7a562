"""strace_ds: critic-free eligibility traces for RL with verifiable rewards."""

__version__ = "0.1.0"
