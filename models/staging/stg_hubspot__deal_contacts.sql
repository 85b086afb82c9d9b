-- Which contacts are on which deal (HubSpot deal → contact associations).
select distinct
    cast(from_id as varchar) as deal_id,
    cast(to_id as varchar) as contact_id
from {{ source('hubspot', 'deals_contacts') }}
