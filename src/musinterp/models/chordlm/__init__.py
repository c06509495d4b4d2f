"""The chordlm family (study S4): small decoder-only transformers on chord progressions, with
TransformerLens's parameter and hook names. ``spec`` (registry entry, torch-free), ``model``."""
