"""Operations: what keeps a run fast and stoppable, apart from the method.

A reader of the method (``dd_core.tta``, ``ensemble``, ``calibrate``, ``models``, ``evaluate``,
``data``, ``pseudo``, ``train``) may skip this package: caches kept between shard tasks, reading
images ahead of the teacher, the stop token the long loops are given, and workarounds for the
libraries a run lives in. The method's loops take what they need from here as arguments.
"""
