{%- set crm = var('crm', 'hubspot') %}
-- Each person's deals as of var('as_of') (like the scores and attribution):
-- one row per person on a deal created by then; won = 1 when one of those
-- deals was won by then.
select
    i.person_id,
    count(distinct d.deal_id) as deals,
    max(case when d.is_won and d.closed_at <= {{ as_of() }} then 1 else 0 end) as won
from {{ ref('stg_' ~ crm ~ '__deal_contacts') }} dc
join {{ ref('stg_' ~ crm ~ '__deals') }} d on d.deal_id = dc.deal_id
join {{ ref('int_identity') }} i on i.record_id = '{{ crm }}:' || dc.contact_id
where d.created_at <= {{ as_of() }}
group by i.person_id
