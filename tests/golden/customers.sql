-- customers
with __ferry_cte_int_countries as (
select variant, iso_code, country_name from countries
),
scored as (
    select c.*, k.iso_code
    from stg_contacts c
    left join __ferry_cte_int_countries k on k.variant = c.country
)
select
    id,
    email,
    iso_code,
    lead_score,
    lead_score >= 50 as is_mql
from scored

