-- not_null: rows of {{ model }} where {{ column }} is null.
select *
from {{ model }}
where {{ column }} is null
