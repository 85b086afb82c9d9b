-- Closed-won revenue credited to each campaign under each attribution model
-- (one column per model), from attribution_credits.
select
    campaign_id,
    campaign_name,
    channel,
    round(sum(case when model = 'first_touch' then revenue else 0 end), 2) as first_touch,
    round(sum(case when model = 'last_touch' then revenue else 0 end), 2) as last_touch,
    round(sum(case when model = 'linear' then revenue else 0 end), 2) as linear,
    round(sum(case when model = 'time_decay' then revenue else 0 end), 2) as time_decay,
    round(sum(case when model = 'u_shaped' then revenue else 0 end), 2) as u_shaped,
    round(sum(case when model = 'w_shaped' then revenue else 0 end), 2) as w_shaped,
    count(distinct deal_id) as deals_touched
from {{ ref('attribution_credits') }}
group by campaign_id, campaign_name, channel
