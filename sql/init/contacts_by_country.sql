-- An example model: contacts per country, from the landed CRM contacts.
-- It reads the raw stream crm.contacts (land it with `ferry land crm.contacts FILE`)
-- and is stored as a table: `ferry run` builds it, `ferry query` reads it.
{{ config(materialized='table') }}
select
    country,
    count(*) as contacts,
    round(avg(lead_score), 1) as avg_lead_score
from {{ source('crm', 'contacts') }}
group by country
