-- One row per marketing campaign, with the channel its UTM tags map to.
with campaigns as (
    select * from {{ latest_by(source('marketing', 'campaigns'), 'id') }}
)
select
    cast(c.id as bigint) as campaign_id,
    c.name as campaign_name,
    {{ lookup_key('c.utm_source') }} as utm_source,
    {{ lookup_key('c.utm_medium') }} as utm_medium,
    coalesce(exact.channel, by_medium.channel, 'Other') as channel,
    {{ to_ts('c.started_at') }} as started_at,
    cast(c.budget as double) as budget
from campaigns c
left join {{ ref('channel_mapping') }} exact
    on exact.utm_source = {{ lookup_key('c.utm_source') }} and exact.utm_medium = {{ lookup_key('c.utm_medium') }}
left join {{ ref('channel_mapping') }} by_medium
    on by_medium.utm_source = '*' and by_medium.utm_medium = {{ lookup_key('c.utm_medium') }}
