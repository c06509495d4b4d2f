"""Analyses of the four studies; one module per study (see DESIGN.md, "Analyses").

- :mod:`.folkrnn_dynamics` (S2): softmax heatmaps, sparsity, dead/saturated units, unit spectra
  and bar periodicity, unit traces, interventions on bar-periodic units; :func:`run_s2` runs it all.
- :mod:`.folkrnn_copying` (S2): how many training tunes contain each bar and n-gram of a tune.
"""
