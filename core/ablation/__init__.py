"""Ablation matrices: a grid over recipe keys, expanded into cells (``matrix``), run as
ordinary run directories (``run``), and gathered into a table and plots (``report``)."""

from .matrix import Cell, Matrix, cell_problems, load_matrix
from .run import CellResult, default_root, run_matrix

__all__ = ["Cell", "CellResult", "Matrix", "cell_problems", "default_root", "load_matrix", "run_matrix"]
