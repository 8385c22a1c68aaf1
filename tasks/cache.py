"""The teachers, shard plans and images read ahead this process holds: one
:class:`~dd_core.pseudo.teacher.TeacherCache`, one :class:`~dd_core.data.unlabeled.PlanCache` and one
:class:`~dd_core.pseudo.reading.ReadAhead` per process.

The shard tasks a process runs share them: the threads of the flow's own process, a Dask worker's,
a deployment worker's. Tasks reach them through this module (never a copy of it): a task function
sent to a Dask worker travels by value, but a module travels by name, so on the worker they are the
worker's own caches.
"""

from dd_core.data.unlabeled import PlanCache
from dd_core.pseudo.reading import ReadAhead
from dd_core.pseudo.teacher import TeacherCache

TEACHERS = TeacherCache()
PLANS = PlanCache()
READ_AHEAD = ReadAhead()
