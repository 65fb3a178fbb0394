"""Training the embedded default model: generated scenes (:mod:`.scenes`) and the training loop (:mod:`.train`).

:mod:`.scenes` and :mod:`.evaluation` need only numpy and OpenCV; :mod:`.train` needs torch and the
official ``segment_anything`` (the ``export`` extra).
"""
