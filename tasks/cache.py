"""The teachers this process holds: one :class:`~dd_core.pseudo.teacher.TeacherCache` per process.

The shard tasks a process runs share it: the threads of the flow's own process, a Dask worker's,
a deployment worker's. Tasks reach it through this module (never a copy of it): a task function
sent to a Dask worker travels by value, but a module travels by name, so on the worker it is the
worker's own cache.
"""

from dd_core.pseudo.teacher import TeacherCache

TEACHERS = TeacherCache()
