"""shieldaudit: a tamper-evident, per-container audit trail of the container lifecycle.

This module stays import-free: the OCI hook imports it on every container start.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
