"""Before training: volumes to slice folders, the dataset check and the data fingerprint.

:mod:`~segexp.data.prepare.volumes_to_slices` is ``segexp-prepare`` (CT volumes -> the slice
folders ``segexp-train`` reads; ``io`` and ``phantom`` only), :mod:`~segexp.data.prepare.check` is
``segexp-check`` (every problem of a slice or volume folder, read with the listing and readers
training uses, hence its import of ``runtime``) and :mod:`~segexp.data.prepare.fingerprint` the
plain-data fingerprint it reports. Nothing in ``io`` or ``runtime`` imports this stage.
"""
