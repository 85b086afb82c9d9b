-- One row per marketing touch (page views, ad clicks, downloads, form fills,
-- webinars, events, demo requests). Touches arrive late and are re-sent:
-- the latest copy per id wins. The channel comes from the touch's own UTM
-- tags (as typed into the link), mapped by the channel_mapping seed.
with touches as (
    select * from {{ latest_by(source('marketing', 'touches'), 'id') }}
)
select
    cast(t.id as bigint) as touch_id,
    {{ clean_email('t.email') }} as email,
    t.type as touch_type,
    cast(t.campaign_id as bigint) as campaign_id,
    {{ lookup_key('t.utm_source') }} as utm_source,
    {{ lookup_key('t.utm_medium') }} as utm_medium,
    coalesce(exact.channel, by_medium.channel, 'Other') as channel,
    {{ to_ts('t.occurred_at') }} as occurred_at,
    {{ to_ts('t.updated_at') }} as arrived_at
from touches t
left join {{ ref('channel_mapping') }} exact
    on exact.utm_source = {{ lookup_key('t.utm_source') }} and exact.utm_medium = {{ lookup_key('t.utm_medium') }}
left join {{ ref('channel_mapping') }} by_medium
    on by_medium.utm_source = '*' and by_medium.utm_medium = {{ lookup_key('t.utm_medium') }}
