-- One row per sequencer email event: sent, opened, clicked, replied (with
-- the reply's outcome), bounced.
with events as (
    select * from {{ latest_by(source('sequencer', 'email_events'), 'id') }}
)
select
    cast(e.id as bigint) as event_id,
    {{ clean_email('e.email') }} as email,
    e.sequence as sequence_name,
    cast(e.step as bigint) as step,
    e.event as event_type,
    cast(e.reply_outcome as varchar) as reply_outcome,
    {{ to_ts('e.occurred_at') }} as occurred_at
from events e
