{%- set crm = var('crm', 'hubspot') %}
-- Multi-touch attribution of closed-won revenue. A conversion is a deal won
-- on or before var('as_of'); its touches are those of every person on the
-- deal that happened within var('attribution_lookback_days') before the
-- close date (and not after it), ordered by time (then touch id). One row
-- per conversion, touch and model with a non-zero credit; credits sum to 1
-- per conversion and model (tested in sql/tests/).
--
--   first_touch  1 to the first touch
--   last_touch   1 to the last touch
--   linear       1/n to each
--   time_decay   0.5^(days before close / var('attribution_half_life_days')), normalized
--   u_shaped     40% first, 40% last, 20% shared by the touches between
--                (one touch: 100%; two: 50/50)
--   w_shaped     30% first, 30% the opportunity-creation touch (the last
--                touch on or before the deal was created), 30% last, 10%
--                shared by the rest; where these coincide their shares add
--                up, and with no other touches the 10% is spread over the
--                three slots
{% set lookback = var('attribution_lookback_days', 90) %}
{% set half_life = var('attribution_half_life_days', 7) %}
with conversions as (
    select deal_id, amount, created_at as deal_created_at, closed_at
    from {{ ref('stg_' ~ crm ~ '__deals') }}
    where is_won and closed_at is not null and closed_at <= {{ as_of() }}
),
deal_people as (
    select distinct dc.deal_id, i.person_id
    from {{ ref('stg_' ~ crm ~ '__deal_contacts') }} dc
    join {{ ref('int_identity') }} i on i.record_id = '{{ crm }}:' || dc.contact_id
),
path as (
    select
        c.deal_id, c.amount, c.deal_created_at, c.closed_at,
        t.touch_id, t.person_id, t.channel, t.campaign_id, t.campaign_name, t.occurred_at,
        row_number() over (partition by c.deal_id order by t.occurred_at, t.touch_id) as pos,
        count(*) over (partition by c.deal_id) as n,
        power(0.5, {{ days_between('t.occurred_at', 'c.closed_at') }} / {{ half_life }}) as decay
    from conversions c
    join deal_people dp on dp.deal_id = c.deal_id
    join {{ ref('fct_touches') }} t on t.person_id = dp.person_id
    where t.occurred_at <= c.closed_at
      and t.occurred_at >= c.closed_at - interval '{{ lookback }} days'
),
slots as (
    select
        p.*,
        coalesce(o.opp_pos, 1) as opp_pos,
        sum(decay) over (partition by p.deal_id) as decay_total
    from path p
    left join (
        select deal_id, max(case when occurred_at <= deal_created_at then pos end) as opp_pos
        from path group by deal_id
    ) o on o.deal_id = p.deal_id
),
weighted as (
    select
        s.*,
        (case when pos = 1 then 1 else 0 end) + (case when pos = n then 1 else 0 end) as u_slots,
        (case when pos = 1 then 1 else 0 end) + (case when pos = opp_pos then 1 else 0 end)
            + (case when pos = n then 1 else 0 end) as w_slots,
        -- touches that are none of first, opportunity creation, last
        n - (case when n = 1 then 1
                  when opp_pos = 1 or opp_pos = n then 2
                  else 3 end) as w_others
    from slots s
),
credits as (
    select *, 'first_touch' as model, case when pos = 1 then 1.0 else 0.0 end as credit from weighted
    union all
    select *, 'last_touch', case when pos = n then 1.0 else 0.0 end from weighted
    union all
    select *, 'linear', 1.0 / n from weighted
    union all
    select *, 'time_decay', decay / decay_total from weighted
    union all
    select *, 'u_shaped',
        0.4 * u_slots + case when n <= 2 then 0.2 * u_slots / 2.0
                             when u_slots = 0 then 0.2 / (n - 2)
                             else 0.0 end
    from weighted
    union all
    select *, 'w_shaped',
        0.3 * w_slots + case when w_others = 0 then 0.1 * w_slots / 3.0
                             when w_slots = 0 then 0.1 / w_others
                             else 0.0 end
    from weighted
)
select
    deal_id,
    model,
    touch_id,
    person_id,
    channel,
    campaign_id,
    campaign_name,
    occurred_at,
    closed_at,
    cast(pos as bigint) as touch_position,
    n as touches_in_path,
    credit,
    amount * credit as revenue
from credits
where credit > 0
