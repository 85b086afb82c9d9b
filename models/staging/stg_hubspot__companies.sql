{{ config(enabled = var('crm', 'hubspot') == 'hubspot') }}
-- One row per HubSpot company: domain cleaned (scheme, www. and path
-- removed), industry mapped to the team's taxonomy, employees as a number
-- with a size band and segment, country normalized.
with companies as (
    -- records deleted (archived) in HubSpot drop out
    select * from {{ latest_by(source('hubspot', 'companies'), 'id') }}
    where not coalesce(archived, false)
)
select
    cast(c.id as varchar) as company_id,
    nullif(trim(c.name), '') as company_name,
    {{ clean_domain('c.domain') }} as domain,
    nullif(trim(c.industry), '') as industry_raw,
    it.industry,
    it.sector,
    cast(nullif(c.numberofemployees, '') as bigint) as employees,
    case
        when cast(nullif(c.numberofemployees, '') as bigint) is null then null
        when cast(nullif(c.numberofemployees, '') as bigint) < 50 then '1-49'
        when cast(nullif(c.numberofemployees, '') as bigint) < 200 then '50-199'
        when cast(nullif(c.numberofemployees, '') as bigint) < 1000 then '200-999'
        else '1000+'
    end as size_band,
    ca.country_code,
    ca.country_name,
    {{ to_ts('c.createdate') }} as created_at
from companies c
left join {{ ref('industry_taxonomy') }} it on it.raw_industry = {{ lookup_key('c.industry') }}
left join {{ ref('country_aliases') }} ca on ca.alias = {{ lookup_key('c.country') }}
where not coalesce(c.archived, false)
