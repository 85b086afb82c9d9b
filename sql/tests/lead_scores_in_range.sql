-- Scores stay within their documented ranges, and an MQL has an MQL date.
select person_id, fit_score, engagement_score, lead_score, is_mql, mql_at
from {{ ref('contact_scores') }}
where fit_score not between 0 and 50
   or engagement_score not between 0 and 50
   or lead_score not between 0 and 100
   or (is_mql and mql_at is null)
