-- An example model: contacts per country, from the landed CRM contacts.
-- It reads the raw stream crm.contacts (land it with `ferry land crm.contacts FILE`).
select
    country,
    count(*) as contacts
from {{ source('crm', 'contacts') }}
group by country
