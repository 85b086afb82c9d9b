-- The latest attempt of each source stream.
select pipeline, status, rows, quarantined, error, error_party
from (
  select source || '.' || stream as pipeline, status, rows, quarantined, error, error_party,
         row_number() over (partition by source, stream order by started_at desc) as rn
  from ferry.extract_runs
)
where rn = 1
