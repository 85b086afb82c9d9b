-- Recent failed attempts of source streams, newest first.
select source || '.' || stream as pipeline, run_id, started_at as at, error, error_party
from ferry.extract_runs
where error is not null
order by started_at desc
limit 60
