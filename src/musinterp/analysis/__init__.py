"""Analyses of the four studies (see DESIGN.md, "Analyses").

Study S2 (folk-rnn dynamics), split by concern:

- :mod:`.folkrnn_tunes`: tune tokens (Sturm's blog reel), generation, teacher forcing, bar
  length and bar durations;
- :mod:`.folkrnn_units`: sparsity, dead/saturated units, unit spectra and bar periodicity, traces;
- :mod:`.folkrnn_interventions`: clamping units, bar-line probabilities, bar correctness;
- :mod:`.folkrnn_copying`: how many training tunes contain each bar and n-gram of a tune;
- :mod:`.folkrnn_dynamics`: :func:`~.folkrnn_dynamics.run_s2` runs it all (and re-exports the
  names above);
- :mod:`.folkrnn_outputs`: the tables and arrays of rule ``s2_folkrnn`` and how the notebook reads them.
"""
