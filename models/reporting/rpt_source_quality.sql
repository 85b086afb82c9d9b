-- How good each lead source (first-touch channel) is: volume, average lead
-- score, MQL, opportunity and win rates, and closed-won revenue credited to
-- it under the first-touch and linear models.
with by_source as (
    select
        coalesce(s.first_touch_channel, 'No touches') as source,
        count(*) as leads,
        round(avg(s.lead_score), 1) as avg_lead_score,
        round(avg(case when s.is_mql then 1.0 else 0.0 end), 4) as mql_rate,
        round(avg(case when o.person_id is not null then 1.0 else 0.0 end), 4) as opportunity_rate,
        round(avg(coalesce(o.won, 0) * 1.0), 4) as win_rate
    from {{ ref('contact_scores') }} s
    left join {{ ref('int_person_deals') }} o on o.person_id = s.person_id
    group by 1
),
revenue as (
    select
        channel as source,
        round(sum(case when model = 'first_touch' then revenue else 0 end), 2) as first_touch_revenue,
        round(sum(case when model = 'linear' then revenue else 0 end), 2) as linear_revenue
    from {{ ref('attribution_credits') }}
    group by channel
)
select
    b.*,
    coalesce(r.first_touch_revenue, 0) as first_touch_revenue,
    coalesce(r.linear_revenue, 0) as linear_revenue
from by_source b
left join revenue r on r.source = b.source
