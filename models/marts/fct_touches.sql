-- One row per marketing touch, tied to the person whose email it carries,
-- with its campaign and engagement points. Touches whose email matches no
-- person keep a null person_id.
with emails as (
    select r.email, min(i.person_id) as person_id
    from {{ ref('int_person_records') }} r
    join {{ ref('int_identity') }} i on i.record_id = r.record_id
    where r.email is not null
    group by r.email
)
select
    t.touch_id,
    e.person_id,
    t.email,
    t.touch_type,
    t.channel,
    t.campaign_id,
    c.campaign_name,
    t.occurred_at,
    t.arrived_at,
    coalesce(w.points, 0) as points
from {{ ref('stg_marketing__touches') }} t
left join emails e on e.email = t.email
left join {{ ref('stg_marketing__campaigns') }} c on c.campaign_id = t.campaign_id
left join {{ ref('engagement_weights') }} w on w.touch_type = t.touch_type
