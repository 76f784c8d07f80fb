"""Decision: window scores in, alarms out.

Takes window scores and the capture blocks; gives period scores and the alarm's onsets and
back-to-normal (:mod:`~edge_asd.decision.alarm`: the k-of-n rule and the sequential evidence rule of
:mod:`~edge_asd.decision.evidence`), sensor faults (:mod:`~edge_asd.decision.signal_quality`) and
machine states (:mod:`~edge_asd.decision.machine_state`) that pause decisions; and fits the rules on
site (:mod:`~edge_asd.decision.calibration`, :mod:`~edge_asd.decision.enrollment`).
"""
