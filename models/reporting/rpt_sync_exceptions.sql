-- Rows the CRM refused or that could not be sent, from ferry's sync log:
-- per sync, error category and message, how many keys, and when it last
-- happened. A build runs models before syncs, so this shows the syncs up to
-- the previous build; `ferry query` on ferry.sync_log shows the latest.
select
    sync,
    status,
    coalesce(error_category, 'UNKNOWN') as error_category,
    error_message,
    count(distinct key) as keys,
    count(*) as attempts,
    min(key) as example_key,
    max(at) as last_seen_at
from ferry.sync_log
where status <> 'ok'
group by sync, status, coalesce(error_category, 'UNKNOWN'), error_message
