{%- set crm = var('crm', 'hubspot') %}
-- Every distinct normalized job title → function, seniority and persona.
-- A title matches a keyword when the keyword appears in it as whole words
-- ('vp marketing' matches 'vp' and 'marketing'); the lowest priority wins.
-- A title with a function but no seniority keyword is an individual
-- contributor. Titles no rule recognizes get the persona 'Other'.
with titles as (
    select title_key from {{ ref('stg_' ~ crm ~ '__contacts') }} where title_key <> ''
    union
    select title_key from {{ ref('stg_marketing__leads') }} where title_key <> ''
),
seniority as (
    select title_key, seniority from (
        select t.title_key, s.seniority,
               row_number() over (partition by t.title_key order by s.priority, s.keyword) as rn
        from titles t
        join {{ ref('title_seniority') }} s
          on strpos(' ' || t.title_key || ' ', ' ' || s.keyword || ' ') > 0
    ) ranked
    where rn = 1
),
functions as (
    select title_key, function from (
        select t.title_key, f.function,
               row_number() over (partition by t.title_key order by f.priority, f.keyword) as rn
        from titles t
        join {{ ref('title_functions') }} f
          on strpos(' ' || t.title_key || ' ', ' ' || f.keyword || ' ') > 0
    ) ranked
    where rn = 1
)
select
    t.title_key,
    f.function,
    coalesce(s.seniority, case when f.function is not null then 'Individual Contributor' end) as seniority,
    coalesce(p.persona, 'Other') as persona
from titles t
left join seniority s on s.title_key = t.title_key
left join functions f on f.title_key = t.title_key
left join {{ ref('personas') }} p
  on p.function = f.function
 and p.seniority = coalesce(s.seniority, 'Individual Contributor')
