"""Reporting what was measured: tables for the terminal (table.py), charts (plot.py), two runs
compared (compare.py), and the precision comparison (precision.py)."""
