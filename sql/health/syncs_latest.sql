-- The latest run of each sync.
select pipeline, status, created + updated + archived as sent, rejected + failed as rejected,
       created + updated + archived + rejected + failed as attempted, error
from (
  select sync as pipeline, *, row_number() over (partition by sync order by started_at desc) as rn
  from ferry.sync_runs
)
where rn = 1
