{{ config(enabled = var('crm', 'hubspot') == 'hubspot') }}
-- One row per HubSpot contact (its latest extracted version), cleaned:
-- email lower-cased, free-mail flagged, country and US state normalized from
-- the seed dictionaries, the job title reduced to keywords for int_job_titles,
-- and the company it is associated with.
with contacts as (
    -- records deleted (archived) in HubSpot drop out
    select * from {{ latest_by(source('hubspot', 'contacts'), 'id') }}
    where not coalesce(archived, false)
),
company as (
    -- the current association (landed with the contact's latest version):
    -- the primary company (association type 1) first, else the lowest id
    select
        cast(a.from_id as varchar) as contact_id,
        cast(first_value(cast(a.to_id as bigint) order by coalesce(a.type_id, 0) <> 1, cast(a.to_id as bigint)) as varchar) as company_id
    from {{ source('hubspot', 'contacts_companies') }} a
    join contacts c
      on cast(c.id as varchar) = cast(a.from_id as varchar)
     and c._ferry_run_id = a._ferry_run_id
    group by 1
)
select
    cast(c.id as varchar) as contact_id,
    {{ clean_email('c.email') }} as email,
    {{ email_domain(clean_email('c.email')) }} as email_domain,
    fm.domain is not null as is_free_email,
    nullif(trim(c.firstname), '') as first_name,
    nullif(trim(c.lastname), '') as last_name,
    nullif(trim(c.jobtitle), '') as job_title,
    {{ normalize_title('c.jobtitle') }} as title_key,
    nullif(trim(c.company), '') as company_name,
    co.company_id,
    nullif(trim(c.country), '') as country_raw,
    ca.country_code,
    ca.country_name,
    st.state_code,
    c.lifecyclestage as lifecycle_stage,
    nullif(trim(c.hubspot_owner_id), '') as owner_id,
    {{ to_ts('c.createdate') }} as created_at,
    {{ to_ts('c.lastmodifieddate') }} as updated_at
from contacts c
left join company co on co.contact_id = cast(c.id as varchar)
left join {{ ref('free_email_domains') }} fm on fm.domain = {{ email_domain(clean_email('c.email')) }}
left join {{ ref('country_aliases') }} ca on ca.alias = {{ lookup_key('c.country') }}
left join {{ ref('us_states') }} st on st.alias = {{ lookup_key('c.state') }} and ca.country_code = 'US'
where not coalesce(c.archived, false)
