"""Audio input: wav files and (in ``edge_asd.audio.sources``) live capture devices.

Only ``edge_asd.audio.microphone`` imports pyaudio, and only when a microphone is opened.
"""

from edge_asd.audio.resample import resample
from edge_asd.audio.wav import read_wav, wav_info, write_wav

__all__ = ["read_wav", "write_wav", "wav_info", "resample"]
