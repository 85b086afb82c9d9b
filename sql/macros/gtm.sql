{#- Cleaning helpers for the GTM starter project's staging models. -#}

{#- An email address for matching: trimmed, lower case, null when empty. -#}
{% macro clean_email(col) -%}
nullif(lower(trim({{ col }})), '')
{%- endmacro %}

{#- A bare domain from a URL or domain as people type it:
    'https://www.Acme.com/about' → 'acme.com'. -#}
{% macro clean_domain(col) -%}
nullif(split_part(regexp_replace(regexp_replace(lower(trim({{ col }})), '^[a-z]+://', ''), '^www\.', ''), '/', 1), '')
{%- endmacro %}

{#- The domain of an email address. -#}
{% macro email_domain(col) -%}
nullif(split_part({{ col }}, '@', 2), '')
{%- endmacro %}

{#- A job title reduced to lower-case words for keyword rules:
    'Vice President, Marketing' → 'vp marketing', 'C.M.O.' → 'cmo'. -#}
{% macro normalize_title(col) -%}
trim(replace(regexp_replace(regexp_replace(lower(coalesce({{ col }}, '')), '\.', '', 'g'), '[^a-z0-9]+', ' ', 'g'), 'vice president', 'vp'))
{%- endmacro %}

{#- A key for dictionary lookups: trimmed and lower case. -#}
{% macro lookup_key(col) -%}
lower(trim({{ col }}))
{%- endmacro %}

{#- A vendor timestamp string (RFC 3339) as a UTC timestamp; null when empty. -#}
{% macro to_ts(col) -%}
cast(nullif(cast({{ col }} as varchar), '') as timestamp)
{%- endmacro %}

{#- The moment scores are computed at: var('as_of'), or now. -#}
{% macro as_of() -%}
{%- if var('as_of', '') -%} cast('{{ var('as_of') }}' as timestamp) {%- else -%} cast(now() as timestamp) {%- endif -%}
{%- endmacro %}

{#- Days from timestamp a to timestamp b (fractional). -#}
{% macro days_between(a, b) -%}
((date_part('epoch', {{ b }}) - date_part('epoch', {{ a }})) / 86400.0)
{%- endmacro %}

{#- Attribution revenue pivoted to one column per model (for a GROUP BY
    over attribution_credits), then the deals touched. -#}
{% macro revenue_by_model() -%}
{%- for model in ['first_touch', 'last_touch', 'linear', 'time_decay', 'u_shaped', 'w_shaped'] %}
    round(sum(case when model = '{{ model }}' then revenue else 0 end), 2) as {{ model }},
{%- endfor %}
    count(distinct deal_id) as deals_touched
{%- endmacro %}

{#- The lowest CRM record id among `expr`'s values, as text: HubSpot's ids
    are numbers (compared as numbers), Salesforce's are 18-character text. -#}
{% macro lowest_id(expr) -%}
{%- if var('crm', 'hubspot') == 'salesforce' -%} min({{ expr }}) {%- else -%} cast(min(cast({{ expr }} as bigint)) as varchar) {%- endif -%}
{%- endmacro %}
