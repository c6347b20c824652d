"""Makes the audio decoders safe to call from worker threads.

soundfile talks to libsndfile through cffi, which builds each C type and function wrapper lazily on first use.
With cffi 2.x, two threads reaching a not-yet-built type at the same moment can abort the whole process
(`realize_c_type_or_func_lock_held: Assertion ... failed`, seen in the demo training run's start-up, whose
validation reads clip headers on a thread pool). Decoding one tiny file on the calling thread before a pool
starts builds every type the decode and header paths use, so the workers only ever find them ready.
"""

from __future__ import annotations

import functools
import os
import tempfile

import numpy as np


@functools.cache
def realize_decoder_types() -> None:
    """Writes, inspects and reads back a 10 ms wav file through soundfile's path-based calls (the ones the
    loaders use). Once per process; a few milliseconds."""
    import soundfile

    fd, path = tempfile.mkstemp(suffix=".wav")
    os.close(fd)
    try:
        soundfile.write(path, np.zeros(160, np.float32), 16000)
        soundfile.info(path)
        with soundfile.SoundFile(path) as f:
            f.read(frames=f.frames, dtype="float32", always_2d=False)
    finally:
        os.unlink(path)
