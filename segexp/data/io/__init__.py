"""Reading and decoding data files: the bottom stage of :mod:`segexp.data`, importing no other stage.

One reader per concept, strict without a problem collector (training, ``segexp-prepare``) and
tolerant with one (``segexp-check``, :mod:`~segexp.data.io.problems`): slice folders, their pairing
and the one image reader and resize (:mod:`~segexp.data.io.slices`), the colour <-> class codec
(:mod:`~segexp.data.io.rgb_map`), Hounsfield windowing (:mod:`~segexp.data.io.intensity`), volume
files of every format (:mod:`~segexp.data.io.volume_files`), volume cases (:mod:`~segexp.data.io.volumes`),
a slice folder's layout (:mod:`~segexp.data.io.layout`) and the patient splits of its cases
(:mod:`~segexp.data.io.splits`).
"""
