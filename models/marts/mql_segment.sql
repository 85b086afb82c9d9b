-- The MQL segment: every scored person who crossed the MQL threshold, by
-- email. The mql_audience sync keeps the HubSpot list "Ferry MQLs" equal
-- to it: people who become MQLs join, people who leave the model leave.
select email, mql_at
from {{ ref('contact_scores') }}
where is_mql
