"""omnidistill's library: data distillation in plain, testable functions (never imports Prefect)."""

__version__ = "0.1.0"
