-- Every conversion's credits sum to 1 under every attribution model.
select deal_id, model, sum(credit) as total
from {{ ref('attribution_credits') }}
group by deal_id, model
having abs(sum(credit) - 1.0) > 0.000001
