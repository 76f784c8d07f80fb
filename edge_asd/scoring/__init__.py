"""Scoring: frames in, window scores out.

Takes the front end's frames and a model bundle (the contract between desk and device:
:mod:`~edge_asd.scoring.bundle`); gives timed window scores in standard deviations of normal
(:mod:`~edge_asd.scoring.detector` with the int8 model through :mod:`~edge_asd.scoring.runtime`,
optionally a numpy back end, :mod:`~edge_asd.scoring.backends`; streaming in
:mod:`~edge_asd.scoring.streaming`). No TensorFlow.
"""
