-- One credit per deal, model and touch.
select deal_id, model, touch_id, count(*) as credits
from {{ ref('attribution_credits') }}
group by deal_id, model, touch_id
having count(*) > 1
