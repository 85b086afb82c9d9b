-- Outbound sequences: prospects, emails sent, open, reply and bounce rates,
-- and what the replies said.
with events as (select * from {{ ref('stg_sequencer__email_events') }})
select
    sequence_name,
    count(distinct email) as prospects,
    sum(case when event_type = 'sent' then 1 else 0 end) as sent,
    sum(case when event_type = 'opened' then 1 else 0 end) as opened,
    sum(case when event_type = 'replied' then 1 else 0 end) as replied,
    sum(case when event_type = 'bounced' then 1 else 0 end) as bounced,
    round(sum(case when event_type = 'replied' then 1.0 else 0.0 end)
          / nullif(sum(case when event_type = 'sent' then 1 else 0 end), 0), 4) as reply_rate,
    sum(case when reply_outcome = 'interested' then 1 else 0 end) as interested,
    sum(case when reply_outcome = 'not_interested' then 1 else 0 end) as not_interested,
    sum(case when reply_outcome = 'out_of_office' then 1 else 0 end) as out_of_office,
    sum(case when reply_outcome = 'referral' then 1 else 0 end) as referral,
    sum(case when reply_outcome = 'unsubscribe' then 1 else 0 end) as unsubscribe
from events
group by sequence_name
