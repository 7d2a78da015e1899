"""What a run uses from its data: the configured dataset and what each training step reads.

:mod:`~segexp.data.runtime.dataset` (``open_dataset``: the phantom generated when configured, the one
listing of the splits, the mask decoder), :mod:`~segexp.data.runtime.class_table` (the class table
from the config, a ``dataset.json`` or the masks), :mod:`~segexp.data.runtime.sampling` (which slices
an epoch trains on), :mod:`~segexp.data.runtime.loader` (the streaming ``PyDataset``) and
:mod:`~segexp.data.runtime.augment` (the seeded albumentations pipeline). Imports ``io`` and
``phantom``, never ``prepare``.
"""
