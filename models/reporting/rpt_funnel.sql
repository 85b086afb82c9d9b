-- The funnel by lead source (first-touch channel), segment and month the
-- person was first seen: leads → MQLs → SQLs (CRM lifecycle stage sales-
-- qualified or later, or on a deal) → opportunities (on a deal) → won (on a
-- closed-won deal), with stage-to-stage conversion rates.
with deals as (
    select i.person_id, max(case when d.is_won then 1 else 0 end) as won
    from {{ ref('stg_hubspot__deal_contacts') }} dc
    join {{ ref('stg_hubspot__deals') }} d on d.deal_id = dc.deal_id
    join {{ ref('int_identity') }} i on i.record_id = 'hubspot:' || dc.contact_id
    group by i.person_id
),
people as (
    select
        coalesce(s.first_touch_channel, 'No touches') as source,
        s.segment,
        date_trunc('month', p.first_seen_at) as month,
        1 as lead,
        case when s.is_mql then 1 else 0 end as mql,
        case when d.person_id is not null
               or p.lifecycle_stage in ('salesqualifiedlead', 'opportunity', 'customer') then 1 else 0 end as sql,
        case when d.person_id is not null then 1 else 0 end as opportunity,
        coalesce(d.won, 0) as won
    from {{ ref('contact_scores') }} s
    join {{ ref('dim_people') }} p on p.person_id = s.person_id
    left join deals d on d.person_id = s.person_id
)
select
    source,
    segment,
    month,
    sum(lead) as leads,
    sum(mql) as mqls,
    sum(sql) as sqls,
    sum(opportunity) as opportunities,
    sum(won) as won,
    round(sum(mql) * 1.0 / sum(lead), 4) as lead_to_mql,
    round(case when sum(mql) > 0 then sum(sql) * 1.0 / sum(mql) end, 4) as mql_to_sql,
    round(case when sum(sql) > 0 then sum(opportunity) * 1.0 / sum(sql) end, 4) as sql_to_opportunity,
    round(case when sum(opportunity) > 0 then sum(won) * 1.0 / sum(opportunity) end, 4) as opportunity_to_won
from people
group by source, segment, month
