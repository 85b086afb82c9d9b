-- Closed-won revenue credited to each campaign under each attribution model
-- (one column per model), from attribution_credits.
select
    campaign_id,
    campaign_name,
    channel,
    {{ revenue_by_model() }}
from {{ ref('attribution_credits') }}
group by campaign_id, campaign_name, channel
