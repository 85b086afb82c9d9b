{#- latest_by(relation, key, order_by='_ferry_loaded_at'): the newest row per
    key. Extraction is at least once (a crash re-lands the uncommitted range,
    incremental runs re-fetch the boundary record, webhooks may be redelivered),
    so staging models read raw streams through this:
        select * from {{ latest_by(source('hubspot', 'contacts'), 'id') }}
    `key` may be several columns: 'email, account_id'. Built into ferry; a
    project's own sql/macros/latest_by.sql replaces it. -#}
{% macro latest_by(relation, key, order_by='_ferry_loaded_at') -%}
(select * exclude (_ferry_rn) from (select *, row_number() over (partition by {{ key }} order by {{ order_by }} desc) as _ferry_rn from {{ relation }}) as _ferry_latest where _ferry_rn = 1)
{%- endmacro %}
