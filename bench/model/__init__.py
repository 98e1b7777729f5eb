"""Models: what one decode step of a real model reads and computes (workload.py, from the
Hugging Face configs in models/*.json), and that step projected onto catalog chips (project.py)."""
