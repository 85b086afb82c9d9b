{%- set crm = var('crm', 'hubspot') %}
-- One row per person with an email: fit, engagement and lead score, the MQL
-- flag and moment, owner routing and first/last-touch channel. This is what
-- the contact_scores sync sends to HubSpot.
--
-- fit_score (0-50): the sum of the icp_rules points the person's account
--   industry, size band, country and persona earn, capped at 50.
-- engagement_score (0-50): each touch's points halve every
--   var('engagement_half_life_days') days up to var('as_of'); capped at 50.
-- lead_score (0-100): fit + engagement, rounded.
-- mql_at: the first touch at which fit + engagement (decayed to that touch)
--   reached var('mql_threshold'); a person stays an MQL once they crossed it.
-- owner_id: the CRM's owner if a rep set one, else the territory seed's
--   (most specific country and segment match first).
{% set half_life = var('engagement_half_life_days', 30) %}
with people as (
    -- any_key ('*') lets the territory fallbacks join on keys, not on a constant
    select p.*, a.industry, a.size_band, coalesce(a.segment, 'Unknown') as segment, '*' as any_key
    from {{ ref('dim_people') }} p
    left join {{ ref('dim_accounts') }} a on a.account_id = p.account_id
    where p.email is not null
),
attributes as (
    select person_id, 'industry' as attribute, industry as value from people
    union all select person_id, 'size_band', size_band from people
    union all select person_id, 'country_code', country_code from people
    union all select person_id, 'persona', persona from people
),
fit as (
    select a.person_id, least(sum(r.points), 50) as fit_score
    from attributes a
    join {{ ref('icp_rules') }} r on r.attribute = a.attribute and r.value = a.value
    group by a.person_id
),
touches as (
    select
        t.person_id, t.touch_id, t.occurred_at, t.channel, t.points,
        coalesce(f.fit_score, 0) as fit_score,
        {{ days_between('t.occurred_at', as_of()) }} as days_ago
    from {{ ref('fct_touches') }} t
    left join fit f on f.person_id = t.person_id
    where t.person_id is not null and t.occurred_at <= {{ as_of() }}
),
engagement as (
    -- each touch's points halve every half-life up to as_of: a plain
    -- aggregate; first and last channel as ordered aggregates. The decayed
    -- points are summed as decimals: a sum of doubles depends on the order
    -- the engine's partitions add them in, so a score near a rounding
    -- boundary could come out 6.0 one run and 6.1 the next (and be synced).
    select
        person_id,
        cast(sum(cast(points * power(0.5, days_ago / {{ half_life }}) as decimal(18, 9))) as double) as engagement_score,
        sum(points) as undecayed_points,
        min(occurred_at) as first_touch_at,
        max(fit_score) as fit_score,
        first_value(channel order by occurred_at, touch_id) as first_touch_channel,
        last_value(channel order by occurred_at, touch_id) as last_touch_channel,
        count(*) as touches
    from touches
    group by person_id
),
running as (
    -- Decayed engagement at each touch k: sum_j w_j * 0.5^((t_k - t_j)/h)
    -- = 0.5^(s_k/h) * sum_j w_j * 2^(s_j/h), with s the days since the
    -- person's first touch (so the exponents stay within one person's
    -- history): a running sum instead of a self-join. Only people whose
    -- undecayed points could reach the threshold are walked (the rest never
    -- become MQLs).
    select
        t.person_id, t.occurred_at, t.fit_score,
        power(0.5, {{ days_between('e.first_touch_at', 't.occurred_at') }} / {{ half_life }})
            * sum(t.points * power(2.0, {{ days_between('e.first_touch_at', 't.occurred_at') }} / {{ half_life }})) over (
            partition by t.person_id order by t.occurred_at, t.touch_id
            rows between unbounded preceding and current row
        ) as engagement_then
    from touches t
    join engagement e on e.person_id = t.person_id
    where e.fit_score + least(e.undecayed_points, 50) >= {{ var('mql_threshold', 60) }}
),
mql as (
    select person_id, min(occurred_at) as mql_at
    from running
    where fit_score + least(engagement_then, 50) >= {{ var('mql_threshold', 60) }}
    group by person_id
),
scored as (
    select
        p.person_id,
        p.email,
        p.crm_contact_id,
        p.first_name,
        p.last_name,
        p.persona,
        p.seniority,
        p.country_code,
        p.account_id,
        p.segment,
        cast(coalesce(f.fit_score, 0) as bigint) as fit_score,
        round(least(coalesce(e.engagement_score, 0), 50), 1) as engagement_score,
        cast(round(coalesce(f.fit_score, 0) + least(coalesce(e.engagement_score, 0), 50)) as bigint) as lead_score,
        m.mql_at is not null as is_mql,
        m.mql_at,
        to_char(m.mql_at, '%Y-%m-%d') as mql_date,
        p.crm_owner_id,
        coalesce(t1.owner_id, t2.owner_id, t3.owner_id, t4.owner_id) as routed_owner_id,
        coalesce(p.crm_owner_id, t1.owner_id, t2.owner_id, t3.owner_id, t4.owner_id) as owner_id,
        coalesce(t1.territory, t2.territory, t3.territory, t4.territory) as territory,
        e.first_touch_channel,
        e.last_touch_channel,
        coalesce(e.touches, 0) as touches,
        row_number() over (
            partition by p.email
            order by p.crm_contact_id is null, p.crm_contact_id, p.person_id
        ) as email_rank
    from people p
    left join fit f on f.person_id = p.person_id
    left join engagement e on e.person_id = p.person_id
    left join mql m on m.person_id = p.person_id
    left join {{ ref('territories') }} t1 on t1.country_code = p.country_code and t1.segment = p.segment
    left join {{ ref('territories') }} t2 on t2.country_code = p.country_code and t2.segment = p.any_key
    left join {{ ref('territories') }} t3 on t3.country_code = p.any_key and t3.segment = p.segment
    left join {{ ref('territories') }} t4 on t4.country_code = p.any_key and t4.segment = p.any_key
)
-- One row per email (the sync's key): a person with a CRM contact first.
-- People deleted in HubSpot are left out: the sync must not recreate them.
select * exclude (email_rank) from scored s
where email_rank = 1
  and not exists (
      select 1 from {{ ref('stg_' ~ crm ~ '__archived_contacts') }} a where a.email = s.email
  )
