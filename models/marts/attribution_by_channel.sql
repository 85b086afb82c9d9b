-- Closed-won revenue credited to each channel under each attribution model
-- (one column per model), from attribution_credits.
select
    channel,
    {{ revenue_by_model() }}
from {{ ref('attribution_credits') }}
group by channel
