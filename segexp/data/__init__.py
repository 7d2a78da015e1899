"""Data, in sub-packages by stage: ``io`` < ``phantom`` < ``runtime`` < ``prepare``.

* :mod:`segexp.data.io`: reading and decoding files, strict or with a problem collector --
  the problem collector, the slice reader and pairing, the rgb_map codec, CT windowing, volume
  files of every format and volume cases, the folder layout and the patient splits. It imports no other data stage.
* :mod:`segexp.data.phantom`: the built-in synthetic dataset; it writes with ``io`` only.
* :mod:`segexp.data.runtime`: what a run uses: the configured dataset (``open_dataset``, the one
  listing of its splits, which generates the phantom first), its class table, the epoch sampler,
  the loader and augmentation. It imports ``io`` and ``phantom``, never ``prepare``.
* :mod:`segexp.data.prepare`: before training: ``segexp-prepare`` (volumes -> slice folders, on
  ``io`` and ``phantom`` only), ``segexp-check`` and the fingerprint. Only ``check`` imports
  ``runtime``: it lists and reads a dataset exactly as training does.

A stage imports only its own stage or the ones before it (``tests/test_architecture.py``).
"""
