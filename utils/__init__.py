"""Product code below the entry points, grouped by concern (the floor plan: ARCHITECTURE.md).

The root holds what every layer uses: the foundation (errors, atomic writes, the CLI shape, torch helpers, downloads,
run folders), which imports nothing else of the project, and two modules between the layers (checkpoints, plots)
that the train and infer packages use. Packages, bottom to top: ops, config, dataset / loss / eval, train / infer.
"""
