"""Decomposition solvers: layers as blocks coordinated through market prices."""
