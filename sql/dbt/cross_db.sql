{#- dbt's built-in cross-database macros (the `dbt` namespace:
    `{{ dbt.date_trunc('month', 'ordered_at') }}`), written for DataFusion.
    Each renders to SQL DataFusion runs; the golden file
    tests/golden/dbt_macros.sql pins what each one renders. -#}

{% macro date_trunc(datepart, date) -%}
date_trunc('{{ datepart }}', {{ date }})
{%- endmacro %}

{% macro dateadd(datepart, interval, from_date_or_timestamp) -%}
({{ from_date_or_timestamp }} + cast(concat(cast({{ interval }} as varchar), ' {{ datepart }}') as interval))
{%- endmacro %}

{% macro datediff(first_date, second_date, datepart) -%}
{%- if datepart in ('day', 'days') -%}
(cast({{ second_date }} as date) - cast({{ first_date }} as date))
{%- elif datepart in ('week', 'weeks') -%}
floor((cast({{ second_date }} as date) - cast({{ first_date }} as date)) / 7)
{%- elif datepart in ('month', 'months') -%}
((date_part('year', {{ second_date }}) - date_part('year', {{ first_date }})) * 12 + date_part('month', {{ second_date }}) - date_part('month', {{ first_date }}))
{%- elif datepart in ('year', 'years') -%}
(date_part('year', {{ second_date }}) - date_part('year', {{ first_date }}))
{%- elif datepart in ('hour', 'hours') -%}
floor((date_part('epoch', {{ second_date }}) - date_part('epoch', {{ first_date }})) / 3600)
{%- elif datepart in ('minute', 'minutes') -%}
floor((date_part('epoch', {{ second_date }}) - date_part('epoch', {{ first_date }})) / 60)
{%- else -%}
(date_part('epoch', {{ second_date }}) - date_part('epoch', {{ first_date }}))
{%- endif -%}
{%- endmacro %}

{% macro last_day(date, datepart) -%}
cast(date_trunc('{{ datepart }}', {{ date }}) + cast('1 {{ datepart }}' as interval) - cast('1 day' as interval) as date)
{%- endmacro %}

{% macro type_string() %}varchar{% endmacro %}
{% macro type_timestamp() %}timestamp{% endmacro %}
{% macro type_float() %}double{% endmacro %}
{% macro type_numeric() %}decimal(28, 6){% endmacro %}
{% macro type_bigint() %}bigint{% endmacro %}
{% macro type_int() %}int{% endmacro %}
{% macro type_boolean() %}boolean{% endmacro %}

{% macro concat(fields) -%}
concat({{ fields | join(', ') }})
{%- endmacro %}

{% macro hash(field) -%}
md5(cast({{ field }} as varchar))
{%- endmacro %}

{% macro safe_cast(field, type) -%}
try_cast({{ field }} as {{ type }})
{%- endmacro %}

{% macro cast_bool_to_text(field) -%}
cast({{ field }} as varchar)
{%- endmacro %}

{% macro any_value(expression) -%}
first_value({{ expression }})
{%- endmacro %}

{% macro bool_or(expression) -%}
bool_or({{ expression }})
{%- endmacro %}

{% macro listagg(measure, delimiter_text="','", order_by_clause=none, limit_num=none) -%}
string_agg({{ measure }}, {{ delimiter_text }}{% if order_by_clause %} {{ order_by_clause }}{% endif %})
{%- endmacro %}

{% macro split_part(string_text, delimiter_text, part_number) -%}
split_part({{ string_text }}, {{ delimiter_text }}, {{ part_number }})
{%- endmacro %}

{% macro position(substring_text, string_text) -%}
strpos({{ string_text }}, {{ substring_text }})
{%- endmacro %}

{% macro replace(field, old_chars, new_chars) -%}
replace({{ field }}, {{ old_chars }}, {{ new_chars }})
{%- endmacro %}

{% macro right(string_text, length_expression) -%}
right({{ string_text }}, {{ length_expression }})
{%- endmacro %}

{% macro length(expression) -%}
length({{ expression }})
{%- endmacro %}

{% macro escape_single_quotes(expression) -%}
{{ expression | replace("'", "''") }}
{%- endmacro %}

{% macro string_literal(value) -%}
'{{ value | replace("'", "''") }}'
{%- endmacro %}

{% macro current_timestamp() -%}
now()
{%- endmacro %}

{% macro array_construct(inputs=[], data_type=none) -%}
make_array({{ inputs | join(', ') }})
{%- endmacro %}

{% macro array_append(array, new_element) -%}
array_append({{ array }}, {{ new_element }})
{%- endmacro %}

{% macro array_concat(array_1, array_2) -%}
array_concat({{ array_1 }}, {{ array_2 }})
{%- endmacro %}
