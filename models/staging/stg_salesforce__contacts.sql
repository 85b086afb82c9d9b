{{ config(enabled = var('crm', 'hubspot') == 'salesforce') }}
-- One row per Salesforce person (latest extracted version), in the shape
-- of stg_hubspot__contacts: contacts (people at an account) and leads not
-- yet converted (a converted lead's person is a contact now). Ids keep
-- Salesforce's prefixes: 003 for a contact, 00Q for a lead. The lifecycle
-- stage is the org's Lifecycle_Stage__c, as orgs synced with a marketing
-- platform carry it. A lead has no account, only a company name: it is
-- matched to the account of that name (lead-to-account matching; the
-- lowest id when several share it), so identity resolution sees its
-- company's domain.
with accounts as (
    select * from {{ latest_by(source('salesforce', 'accounts'), '"Id"') }}
    where not coalesce("IsDeleted", false)
),
account_names as (
    select lower(trim("Name")) as name_key, min("Id") as account_id
    from accounts
    group by 1
),
contacts as (
    select * from {{ latest_by(source('salesforce', 'contacts'), '"Id"') }}
    where not coalesce("IsDeleted", false)
),
leads as (
    select * from {{ latest_by(source('salesforce', 'leads'), '"Id"') }}
    where not coalesce("IsDeleted", false) and not coalesce("IsConverted", false)
),
people as (
    select
        "Id" as id, "Email" as email, "FirstName" as first_name, "LastName" as last_name,
        "Title" as title, cast(null as varchar) as company, "AccountId" as account_id,
        "MailingCountry" as country, "MailingState" as state, "Lifecycle_Stage__c" as lifecycle_stage,
        "OwnerId" as owner_id, "CreatedDate" as created_at, "SystemModstamp" as updated_at
    from contacts
    union all
    select
        l."Id", l."Email", l."FirstName", l."LastName", l."Title", l."Company", an.account_id,
        l."Country", l."State", l."Lifecycle_Stage__c", l."OwnerId", l."CreatedDate", l."SystemModstamp"
    from leads l
    left join account_names an on an.name_key = lower(trim(l."Company"))
)
select
    c.id as contact_id,
    {{ clean_email('c.email') }} as email,
    {{ email_domain(clean_email('c.email')) }} as email_domain,
    fm.domain is not null as is_free_email,
    nullif(trim(c.first_name), '') as first_name,
    nullif(trim(c.last_name), '') as last_name,
    nullif(trim(c.title), '') as job_title,
    {{ normalize_title('c.title') }} as title_key,
    coalesce(nullif(trim(c.company), ''), a."Name") as company_name,
    c.account_id as company_id,
    nullif(trim(c.country), '') as country_raw,
    ca.country_code,
    ca.country_name,
    st.state_code,
    c.lifecycle_stage,
    nullif(trim(c.owner_id), '') as owner_id,
    {{ to_ts('c.created_at') }} as created_at,
    {{ to_ts('c.updated_at') }} as updated_at
from people c
left join accounts a on a."Id" = c.account_id
left join {{ ref('free_email_domains') }} fm on fm.domain = {{ email_domain(clean_email('c.email')) }}
left join {{ ref('country_aliases') }} ca on ca.alias = {{ lookup_key('c.country') }}
left join {{ ref('us_states') }} st on st.alias = {{ lookup_key('c.state') }} and ca.country_code = 'US'
