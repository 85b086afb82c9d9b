{{ config(enabled = var('crm', 'hubspot') == 'salesforce') }}
-- One row per Salesforce account, in the shape of stg_hubspot__companies:
-- the website cleaned to a domain, industry mapped to the team's taxonomy,
-- employees with a size band, country normalized.
with accounts as (
    select * from {{ latest_by(source('salesforce', 'accounts'), '"Id"') }}
    where not coalesce("IsDeleted", false)
)
select
    a."Id" as company_id,
    nullif(trim(a."Name"), '') as company_name,
    {{ clean_domain('a."Website"') }} as domain,
    nullif(trim(a."Industry"), '') as industry_raw,
    it.industry,
    it.sector,
    cast(a."NumberOfEmployees" as bigint) as employees,
    case
        when a."NumberOfEmployees" is null then null
        when a."NumberOfEmployees" < 50 then '1-49'
        when a."NumberOfEmployees" < 200 then '50-199'
        when a."NumberOfEmployees" < 1000 then '200-999'
        else '1000+'
    end as size_band,
    ca.country_code,
    ca.country_name,
    {{ to_ts('a."CreatedDate"') }} as created_at
from accounts a
left join {{ ref('industry_taxonomy') }} it on it.raw_industry = {{ lookup_key('a."Industry"') }}
left join {{ ref('country_aliases') }} ca on ca.alias = {{ lookup_key('a."BillingCountry"') }}
