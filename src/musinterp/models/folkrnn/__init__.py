"""The folk-rnn family: ``spec`` (registry entry, torch-free), ``model`` (the LSTM),
``lasagne_import`` (safe import of the published Lasagne pickles)."""
