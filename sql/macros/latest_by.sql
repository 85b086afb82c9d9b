{#- latest_by(relation, key, order_by='_ferry_loaded_at'): the newest row per
    key. Extraction is at least once (a crash re-lands the uncommitted range,
    incremental runs re-fetch the boundary record, webhooks may be redelivered),
    so staging models read raw streams through this:
        select * from {{ latest_by(source('hubspot', 'contacts'), 'id') }}
    `key` may be several columns or expressions: 'email, account_id'.
    Duplicates are few, so only keys seen more than once are ranked: keys are
    counted by a hash aggregation, rows of unique keys pass straight through
    (a join whose hash table holds only the duplicated keys), and the window
    (a sort) runs on the duplicated keys' rows alone instead of on every
    row. A null key is one key, as in `partition by`. Built into ferry; a
    project's own sql/macros/latest_by.sql replaces it. -#}
{% macro latest_by(relation, key, order_by='_ferry_loaded_at') -%}
{%- set keys = key.split(',') | map('trim') | list -%}
{%- set on %}{% for k in keys %}({{ k }} is not distinct from _ferry_dup._ferry_k{{ loop.index }}){% if not loop.last %} and {% endif %}{% endfor %}{% endset -%}
(with _ferry_all as (select * from {{ relation }}),
_ferry_dup as (select {% for k in keys %}{{ k }} as _ferry_k{{ loop.index }}, {% endfor %}true as _ferry_dup from {{ relation }} group by {{ key }} having count(*) > 1)
select _ferry_all.* from _ferry_dup right join _ferry_all on {{ on }} where _ferry_dup._ferry_dup is null
union all
select * exclude (_ferry_rn) from (select _ferry_all.*, row_number() over (partition by {{ key }} order by {{ order_by }} desc) as _ferry_rn from _ferry_dup join _ferry_all on {{ on }}) as _ferry_latest where _ferry_rn = 1)
{%- endmacro %}
