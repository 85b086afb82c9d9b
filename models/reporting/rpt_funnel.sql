-- The funnel by lead source (first-touch channel), segment and month the
-- person was first seen: leads → MQLs → SQLs → opportunities → won, with
-- stage-to-stage conversion rates. Stages nest: a person at a later stage
-- counts as having passed the earlier ones (a deal contact who never
-- crossed the score threshold is still an MQL and an SQL).
--   MQL: crossed var('mql_threshold'), or the CRM says marketing-qualified
--   SQL: CRM lifecycle stage sales-qualified or later
--   opportunity: on a deal created by var('as_of')
--   won: on a deal won by var('as_of')
with stages as (
    select
        coalesce(s.first_touch_channel, 'No touches') as source,
        s.segment,
        date_trunc('month', p.first_seen_at) as month,
        coalesce(d.won, 0) as won,
        case when d.person_id is not null then 1 else 0 end as opportunity,
        case when d.person_id is not null
               or p.lifecycle_stage in ('salesqualifiedlead', 'opportunity', 'customer') then 1 else 0 end as sql,
        case when s.is_mql or d.person_id is not null
               or p.lifecycle_stage in ('marketingqualifiedlead', 'salesqualifiedlead', 'opportunity', 'customer')
             then 1 else 0 end as mql
    from {{ ref('contact_scores') }} s
    join {{ ref('dim_people') }} p on p.person_id = s.person_id
    left join {{ ref('int_person_deals') }} d on d.person_id = s.person_id
)
select
    source,
    segment,
    month,
    count(*) as leads,
    sum(mql) as mqls,
    sum(sql) as sqls,
    sum(opportunity) as opportunities,
    sum(won) as won,
    round(sum(mql) * 1.0 / count(*), 4) as lead_to_mql,
    round(case when sum(mql) > 0 then sum(sql) * 1.0 / sum(mql) end, 4) as mql_to_sql,
    round(case when sum(sql) > 0 then sum(opportunity) * 1.0 / sum(sql) end, 4) as sql_to_opportunity,
    round(case when sum(opportunity) > 0 then sum(won) * 1.0 / sum(opportunity) end, 4) as opportunity_to_won
from stages
group by source, segment, month
