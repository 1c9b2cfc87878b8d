"""The private core: the plumbing every room shares, below all of them.

Nothing here is public API, and no module here imports a room of the package. The modules
say what they hold:

- :mod:`.data`: the ``(x, y)`` batch types and the data as a fixed list of chunks;
- :mod:`.distributed`: the default process group (world size, rank, sums, gathers);
- :mod:`.params`: the trainable parameters as one flat vector and back;
- :mod:`.state`: the model-state guard of a measurement (BatchNorm, train/eval, RNG);
- :mod:`.functional`: the loss as a function of the parameters, its checks, its gradient;
- :mod:`.checks` and :mod:`.formatting`: argument checks and number formatting, free of
  torch (the rooms that only read records use them).

This ``__init__`` imports nothing, so that the torch-free modules stay torch-free.
"""
