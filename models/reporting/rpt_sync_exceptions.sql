-- Rows the CRM refused or that could not be sent, from ferry's sync log:
-- per sync, error category and message, how many keys, when it last
-- happened, and who must act: the user (a value or mapping the CRM
-- refused, or credentials), the vendor (failures that are retried), or
-- nobody yet (an outcome ferry settles with a read on the next run). A build runs models before syncs, so this shows the syncs up to
-- the previous build; `ferry query` on ferry.sync_log shows the latest.
select
    sync,
    status,
    coalesce(error_category, 'UNKNOWN') as error_category,
    error_message,
    count(distinct key) as keys,
    count(*) as attempts,
    min(key) as example_key,
    max(at) as last_seen_at,
    case
        when status = 'unknown' then 'ferry'
        when coalesce(error_category, 'UNKNOWN') in ('AUTH', 'INVALID_AUTHENTICATION', 'MISSING_SCOPES') then 'user'
        when status = 'failed' then 'vendor'
        else 'user'
    end as who_acts
from ferry.sync_log
where status <> 'ok'
group by sync, status, coalesce(error_category, 'UNKNOWN'), error_message
